"""Pixels <-> the space a target's UNet models: the identity for pixel-space models, an autoencoder for latent ones.

Every part of an audit that reads images into the target's own space (the classifier's training, the UNet
feature extractor of the surrogate labels, the end of sampling) goes through a codec, so a latent target -
a `UNet2DModel` over the latents of a `VQModel` (diffusers' `LDMPipeline`) or an `AutoencoderKL` - is audited
like a pixel one. Images are model-space tensors ``(N, C, H, W)`` in ``[-1, 1]`` (``2 * pixels - 1``, the range
diffusers' UNets and autoencoders take); samples are what the UNet denoises. The scaling follows ``LDMPipeline``
and Stable Diffusion: ``z = scaling_factor * (E(x) - shift_factor)`` and ``x = D(z / scaling_factor + shift_factor)``
(``shift_factor`` is 0 unless the autoencoder's config sets it, as Stable Diffusion 3's does).

Example:

```py
>>> import torch
>>> from diffusers import VQModel
>>> from diffusers_side.models.codec import pixel_codec
>>> codec = pixel_codec(VQModel(block_out_channels=(8, 8), norm_num_groups=4, latent_channels=2,
...                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2))
>>> codec.sample_shape((3, 16, 16)), codec.image_shape((2, 8, 8))
((2, 8, 8), (3, 16, 16))
```
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, VQModel

AUTOENCODERS = (VQModel, AutoencoderKL)


class PixelCodec:
    """The identity: the UNet models the images themselves (`DDPMPipeline`, `DDIMPipeline`, the embedded models)."""

    is_latent = False
    autoencoder = None

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The samples the UNet models for ``images`` (model-space, in ``[-1, 1]``): the images themselves."""
        return images

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """The images (model-space, nominally in ``[-1, 1]``) the UNet's ``samples`` stand for."""
        return samples

    def sample_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(C, H, W)`` of the sample of one image of ``image_shape``."""
        return tuple(image_shape)

    def image_shape(self, sample_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(C, H, W)`` of the image one sample of ``sample_shape`` decodes to."""
        return tuple(sample_shape)


class AutoencoderCodec(PixelCodec):
    """
    A latent target's autoencoder: ``z = scaling_factor * (E(x) - shift_factor)``, ``x = D(z / scaling_factor + shift_factor)``.

    Args:
        autoencoder ([`VQModel`] or [`AutoencoderKL`]): the target's (``vqvae`` of an `LDMPipeline`, ``vae`` of a
            Stable-Diffusion-style pipeline). It is used as it is (frozen by the caller); a `VQModel` quantizes
            in ``decode``, as `LDMPipeline` does.
    """

    is_latent = True

    def __init__(self, autoencoder: VQModel | AutoencoderKL):
        if not isinstance(autoencoder, AUTOENCODERS):
            raise TypeError(f"A latent target's autoencoder must be a VQModel or an AutoencoderKL, got {type(autoencoder).__name__}.")
        self.autoencoder = autoencoder
        config = autoencoder.config
        self.scaling_factor = float(getattr(config, "scaling_factor", None) or 1.0)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        # A VQModel's latents are its quant_conv's output: vq_embed_dim channels (latent_channels unless set).
        self.latent_channels = getattr(config, "vq_embed_dim", None) or config.latent_channels
        self.factor = 2 ** (len(config.block_out_channels) - 1)  # each encoder block but the last halves H and W

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The scaled latents of ``images``; an `AutoencoderKL` samples its posterior with ``generator`` (its mode without)."""
        images = images.to(self.autoencoder.device, self.autoencoder.dtype)
        if isinstance(self.autoencoder, VQModel):
            latents = self.autoencoder.encode(images).latents
        else:
            posterior = self.autoencoder.encode(images).latent_dist
            latents = posterior.sample(generator) if generator is not None else posterior.mode()
        return (latents - self.shift_factor) * self.scaling_factor

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """The images of the scaled latents ``samples`` (as `LDMPipeline` decodes them)."""
        samples = samples.to(self.autoencoder.device, self.autoencoder.dtype)
        return self.autoencoder.decode(samples / self.scaling_factor + self.shift_factor).sample

    def sample_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        _, height, width = image_shape
        return (self.latent_channels, height // self.factor, width // self.factor)

    def image_shape(self, sample_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        _, height, width = sample_shape
        return (self.autoencoder.config.out_channels, height * self.factor, width * self.factor)


def pixel_codec(autoencoder: VQModel | AutoencoderKL | None = None) -> PixelCodec:
    """The codec of a target: [`PixelCodec`] without an autoencoder, else an [`AutoencoderCodec`] around it."""
    return PixelCodec() if autoencoder is None else AutoencoderCodec(autoencoder)
