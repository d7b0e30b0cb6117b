"""Image feature extractors behind one interface, for clustering synthetic images and for similarity metrics.

Every extractor takes images in *pixel space* (float32 ``(N, C, H, W)`` in ``[0, 1]``, as produced by
[`~diffusers_side.storage.data.images_to_tensor`]) and returns one L2-normalised float32 row per image, so the
dot product of two rows is their cosine similarity. [`load_feature_extractor`] builds one from a short
spec:

- ``"unet"`` (default, no download): the target `UNet2DModel`'s own down-block and mid-block
  activations on a slightly noised copy of the image, or of its latents for a latent target
  ([`UNetFeatureExtractor`]);
- ``"pixels"``: raw pixels, area-downsampled to a small grid ([`PixelFeatureExtractor`]);
- a `transformers` vision backbone by Hub id or local folder, e.g. CLIP or DINOv2
  ([`TransformersFeatureExtractor`]);
- a TorchScript file (``*.pt``, ``*.pth``, ``*.torchscript``), the format the SSCD copy-detection
  models are published in ([`TorchScriptFeatureExtractor`]).

[`embed_images`] runs an extractor over a whole image collection in batches and validates its output.
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging
from tqdm.auto import tqdm

from ..models.codec import PixelCodec
from ..storage.data import images_to_tensor

logger = logging.get_logger(__name__)

UNET = "unet"
PIXELS = "pixels"
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# SSCD's recommended inference preprocessing resizes the short edge to 288 pixels.
SSCD_IMAGE_SIZE = 288


class FeatureExtractor(ABC):
    """Base class: maps pixel-space images to L2-normalised feature vectors.

    Subclasses implement [`~FeatureExtractor.extract`] (raw features, any scale and trailing shape);
    calling the extractor checks the input, runs it without gradients, flattens and L2-normalises.

    Attributes:
        name (`str`): the spec that rebuilds this extractor with [`load_feature_extractor`]; it is
            recorded next to every result computed with it.
    """

    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a batch.

        Args:
            images (`torch.Tensor`): float ``(N, C, H, W)`` in ``[0, 1]``.

        Returns:
            `torch.Tensor`: float32 ``(N, D)`` on the CPU, each row of unit L2 norm.
        """
        _check_pixel_images(images, self.name)
        with torch.no_grad():
            features = self.extract(images.float())
        return F.normalize(features.float().flatten(1), dim=1).cpu()

    @abstractmethod
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Raw features ``(N, ...)`` of pixel-space images ``(N, C, H, W)`` in ``[0, 1]``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class _FeaturesCollected(Exception):
    """Raised by the last forward hook to skip the UNet's up-blocks, whose output is not needed."""


class UNetFeatureExtractor(FeatureExtractor):
    """The diffusion model's own encoder as a feature extractor.

    Each image is mapped to model space (``2 * x - 1``), noised to a small timestep with the
    scheduler's ``add_noise`` and passed through the UNet. The outputs of every down block and of the
    mid block are captured with forward hooks (the up blocks are skipped), average-pooled to a
    ``grid x grid`` map so coarse layout is kept, L2-normalised *per block* so that wide deep blocks do
    not drown the shallow ones, then concatenated.

    The noise is one fixed tensor drawn from ``seed`` and shared by every image, so an image always
    gets the same vector, whatever batch it is in, and near-duplicates stay near-duplicates.

    Args:
        unet ([`~diffusers.UNet2DModel`]): the target model.
        scheduler ([`~diffusers.schedulers.scheduling_utils.SchedulerMixin`]): its noise scheduler; only
            its training noise schedule (betas) is used, through a `DDPMScheduler` built from its config.
        timestep (`int`, *optional*): the noise level; defaults to ``noise_fraction`` of
            ``num_train_timesteps`` (30 for the usual 1000).
        noise_fraction (`float`, defaults to 0.03): see ``timestep``. A small t keeps the image content
            while putting the UNet in the regime where its features are most discriminative.
        grid (`int`, defaults to 2): spatial size each block's activations are pooled to.
        seed (`int`, defaults to 0): seed of the fixed noise.
        codec ([`~diffusers_side.models.codec.PixelCodec`], *optional*): for a latent target, its autoencoder:
            images are encoded to the latents the UNet models before they are noised (the posterior's mode).

    Example:

    ```py
    >>> import torch
    >>> from diffusers import DDPMPipeline
    >>> from diffusers_side.labels.features import UNetFeatureExtractor
    >>> pipe = DDPMPipeline.from_pretrained("google/ddpm-cifar10-32")
    >>> extractor = UNetFeatureExtractor(pipe.unet, pipe.scheduler)
    >>> extractor(torch.rand(4, 3, 32, 32)).shape
    torch.Size([4, 4608])
    ```
    """

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        timestep: int | None = None,
        noise_fraction: float = 0.03,
        grid: int = 2,
        seed: int = 0,
        codec: PixelCodec | None = None,
    ):
        self.name = UNET
        self.unet = unet.eval()
        self.codec = codec or PixelCodec()
        self.noise_scheduler = DDPMScheduler.from_config(scheduler.config)
        num_train_timesteps = self.noise_scheduler.config.num_train_timesteps
        self.timestep = int(round(noise_fraction * num_train_timesteps)) if timestep is None else int(timestep)
        if not 0 <= self.timestep < num_train_timesteps:
            raise ValueError(f"UNet feature timestep {self.timestep} is outside [0, {num_train_timesteps}).")
        self.grid = grid
        self.seed = seed
        self.hooked_blocks = list(unet.down_blocks) + ([unet.mid_block] if unet.mid_block is not None else [])
        logger.info(f"UNet features: {len(self.hooked_blocks)} blocks at t={self.timestep}, pooled to {grid}x{grid}.")

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        size = self.unet.config.sample_size
        sample_shape = (self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        in_channels = self.codec.image_shape(sample_shape)[0]
        if images.shape[1] != in_channels:
            raise ValueError(
                f"The UNet takes {in_channels}-channel images but got {images.shape[1]} channels; "
                "embed images produced by this model (or its training data) only."
            )
        sample = self.codec.encode(2 * images - 1).to(self.unet.device, self.unet.dtype)
        noise = self._fixed_noise(sample.shape[1:]).to(sample.device, sample.dtype).expand_as(sample)
        timesteps = torch.full((sample.shape[0],), self.timestep, dtype=torch.long, device=sample.device)
        noisy = self.noise_scheduler.add_noise(sample, noise, timesteps)
        return torch.cat([F.normalize(a.flatten(1), dim=1) for a in self._block_activations(noisy, timesteps)], dim=1)

    def _fixed_noise(self, shape: torch.Size) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn((1, *shape), generator=generator)

    def _block_activations(self, noisy: torch.Tensor, timesteps: torch.Tensor) -> list[torch.Tensor]:
        pooled: list[torch.Tensor] = []
        last = self.hooked_blocks[-1]

        def hook(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            pooled.append(F.adaptive_avg_pool2d(hidden.float(), self.grid))
            if module is last:
                raise _FeaturesCollected

        handles = [block.register_forward_hook(hook) for block in self.hooked_blocks]
        try:
            self.unet(noisy, timesteps)
        except _FeaturesCollected:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return pooled


class PixelFeatureExtractor(FeatureExtractor):
    """Raw pixels in model space (``[-1, 1]``), area-downsampled to ``size x size`` per channel.

    Cheap and download-free, but cosine similarity of raw pixels is high for any two aligned images
    with a similar background: use it as a baseline or for tiny data.

    Args:
        size (`int`, defaults to 8): the side of the downsampled grid.
    """

    def __init__(self, size: int = 8):
        self.name = PIXELS
        self.size = size

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(2 * images - 1, self.size)


class TransformersFeatureExtractor(FeatureExtractor):
    """A `transformers` vision backbone loaded with `AutoModel` + `AutoImageProcessor`.

    The image vector is ``get_image_features`` for models that have it (CLIP, SigLIP), else the CLS
    token of the last hidden state for token models (ViT, DINOv2), else the pooled output (CNNs).
    Grayscale images are repeated to three channels. Remote code is never run.

    Args:
        name_or_path (`str`): a Hub model id (e.g. ``"facebook/dinov2-small"``,
            ``"openai/clip-vit-base-patch32"``) or a local folder holding the model and its image
            processor config.
        device (`str` or `torch.device`, defaults to ``"cpu"``).
    """

    def __init__(self, name_or_path: str, device: str | torch.device = "cpu"):
        from transformers import AutoImageProcessor, AutoModel

        self.name = str(name_or_path)
        try:
            self.processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=False)
            self.model = AutoModel.from_pretrained(name_or_path, trust_remote_code=False).to(device).eval()
        except OSError as error:
            raise ValueError(
                f"Could not load a transformers vision model from {name_or_path!r} ({error}). Pass 'unet', "
                "'pixels', a local model folder, a reachable Hub id, or a TorchScript file (*.pt)."
            ) from error

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        inputs = self.processor(images=list(rgb.cpu()), return_tensors="pt", do_rescale=False)
        pixel_values = inputs["pixel_values"].to(self.model.device, self.model.dtype)
        if hasattr(self.model, "get_image_features"):
            output = self.model.get_image_features(pixel_values=pixel_values)
            return output if torch.is_tensor(output) else output.pooler_output
        output = self.model(pixel_values=pixel_values)
        hidden = output.last_hidden_state
        if hidden.ndim == 3:
            return hidden[:, 0]
        return output.pooler_output if output.pooler_output is not None else hidden.mean(dim=(2, 3))


class TorchScriptFeatureExtractor(FeatureExtractor):
    """A TorchScript image-descriptor model, such as the SSCD copy-detection models.

    Images are repeated to three channels if grayscale, resized to ``image_size x image_size``
    (bilinear, antialiased) and normalised with the ImageNet mean and std, as SSCD expects.

    Args:
        path (`str` or `os.PathLike`): the ``torch.jit.save`` file, e.g. ``sscd_disc_mixup.torchscript.pt``.
        image_size (`int`, defaults to 288): the input side; SSCD recommends 288 (short edge), 224 also works.
        device (`str` or `torch.device`, defaults to ``"cpu"``).
    """

    def __init__(self, path: str | os.PathLike, image_size: int = SSCD_IMAGE_SIZE, device: str | torch.device = "cpu"):
        self.name = str(path)
        self.image_size = image_size
        self.device = torch.device(device)
        with warnings.catch_warnings():
            # TorchScript is the format SSCD is published in; its deprecation is not the user's to fix.
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning)
            try:
                self.model = torch.jit.load(str(path), map_location=self.device).eval()
            except RuntimeError as error:
                raise ValueError(f"{path} is not a TorchScript model saved with torch.jit.save ({error}).") from error
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        size = (self.image_size, self.image_size)
        resized = F.interpolate(rgb.to(self.device), size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.model((resized - self.mean.to(self.device)) / self.std.to(self.device))


def load_feature_extractor(
    spec: str = UNET,
    unet: UNet2DModel | None = None,
    scheduler: SchedulerMixin | None = None,
    device: str | torch.device | None = None,
    image_size: int = SSCD_IMAGE_SIZE,
    codec: PixelCodec | None = None,
) -> FeatureExtractor:
    """Build a feature extractor from a short spec.

    Args:
        spec (`str`, defaults to ``"unet"``): ``"unet"``, ``"pixels"``, a TorchScript file
            (``*.pt``, ``*.pth``, ``*.torchscript``), or a `transformers` model id / local folder.
        unet ([`~diffusers.UNet2DModel`], *optional*): required for ``"unet"``.
        scheduler (`SchedulerMixin`, *optional*): the UNet's scheduler; required for ``"unet"``.
        device (`str` or `torch.device`, *optional*): where to run. ``None`` keeps the UNet where it is
            and puts loaded models on the CPU.
        image_size (`int`, defaults to 288): input side for TorchScript models only.
        codec ([`~diffusers_side.models.codec.PixelCodec`], *optional*): ``"unet"`` of a latent target only: its
            autoencoder (see [`UNetFeatureExtractor`]).

    Returns:
        [`FeatureExtractor`]: call it on ``(N, C, H, W)`` pixel-space images.

    Raises:
        `ValueError`: ``"unet"`` without a UNet or scheduler, or a model that cannot be loaded.
        `FileNotFoundError`: a path that does not exist.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_side.labels.features import load_feature_extractor
    >>> extractor = load_feature_extractor("pixels")
    >>> extractor(torch.rand(2, 1, 16, 16)).shape
    torch.Size([2, 64])
    ```
    """
    spec = str(spec)
    if spec == UNET:
        if unet is None or scheduler is None:
            raise ValueError("The 'unet' feature extractor needs the target pipeline's unet and scheduler; pass --pipeline.")
        if codec is not None and codec.autoencoder is not None and device is not None:
            codec.autoencoder.to(device)
        return UNetFeatureExtractor(unet.to(device) if device is not None else unet, scheduler, codec=codec)
    if spec == PIXELS:
        return PixelFeatureExtractor()
    path = check_feature_spec(spec)
    if path is not None:
        if path.is_file():
            if path.suffix not in TORCHSCRIPT_SUFFIXES:
                raise ValueError(f"Feature extractor file {spec!r} is not a TorchScript file ({', '.join(TORCHSCRIPT_SUFFIXES)}).")
            return TorchScriptFeatureExtractor(path, image_size=image_size, device=device or "cpu")
    return TransformersFeatureExtractor(spec, device=device or "cpu")


def check_feature_spec(spec: str | os.PathLike, flag: str = "Feature extractor") -> Path | None:
    """The local file or folder ``spec`` names, ``None`` for ``"unet"``, ``"pixels"`` and Hub ids; nothing is loaded.

    A spec written as a path (a TorchScript suffix, or starting with ``.`` or ``/``) must exist.

    Raises:
        `FileNotFoundError`: naming ``flag`` and the path.
    """
    spec = str(spec)
    path = Path(spec)
    if spec in (UNET, PIXELS) or not (path.suffix in TORCHSCRIPT_SUFFIXES or spec.startswith((".", "/")) or path.exists()):
        return None
    if not path.exists():
        raise FileNotFoundError(f"{flag} file or folder {spec!r} does not exist.")
    return path


def embed_images(
    extractor: FeatureExtractor,
    images: torch.Tensor | Sequence[PIL.Image.Image],
    batch_size: int = 256,
) -> torch.Tensor:
    """Embed a collection of images in batches, with a progress bar, checking every batch.

    Args:
        extractor ([`FeatureExtractor`]): any callable with a ``name`` that maps ``(B, C, H, W)``
            pixel-space images to ``(B, D)`` features.
        images (`torch.Tensor` or sequence of `PIL.Image.Image`): a pixel-space tensor
            ``(N, C, H, W)`` in ``[0, 1]``; PIL images of one size (a list, or a lazy `datasets`
            column such as ``dataset["image"]``, decoded one batch at a time); or any sized
            object whose slices are such tensors.
        batch_size (`int`, defaults to 256).

    Returns:
        `torch.Tensor`: float32 ``(N, D)`` on the CPU.

    Raises:
        `ValueError`: on an empty collection, images of mixed sizes, or an extractor that returns
            NaN/inf, the wrong number of rows, or a feature size that changes between batches.

    Example:

    ```py
    >>> from diffusers_side.storage.data import load_image_dataset
    >>> from diffusers_side.labels.features import embed_images, load_feature_extractor
    >>> dataset = load_image_dataset("default")
    >>> features = embed_images(load_feature_extractor("pixels"), dataset["image"])
    >>> features.shape
    torch.Size([100, 64])
    ```
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    total = len(images)
    if total == 0:
        raise ValueError("No images to embed: the collection is empty.")
    chunks, image_shape = [], None
    for start in tqdm(range(0, total, batch_size), desc=f"Embedding ({extractor.name})", unit="batch"):
        batch = images[start : start + batch_size]
        batch = batch if torch.is_tensor(batch) else images_to_tensor(list(batch))
        if image_shape is None:
            image_shape = tuple(batch.shape[1:])
        elif tuple(batch.shape[1:]) != image_shape:
            raise ValueError(
                f"Images have mixed sizes: (C, H, W) = {image_shape} at the start but {tuple(batch.shape[1:])} "
                f"from image {start}; resize the data set to one size first."
            )
        features = extractor(batch)
        _check_features(features, batch.shape[0], chunks[0].shape[1] if chunks else None, extractor.name, start)
        chunks.append(features.detach().float().cpu())
    return torch.cat(chunks)


def _check_pixel_images(images: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or not images.is_floating_point():
        description = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise TypeError(f"Feature extractor {name!r} takes a float (N, C, H, W) tensor, got {description}.")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"Feature extractor {name!r} takes pixel-space images in [0, 1], got values in "
            f"[{images.min().item():.3g}, {images.max().item():.3g}]; map model-space images with (x + 1) / 2."
        )


def _check_features(features, batch_size: int, dim: int | None, name: str, start: int) -> None:
    where = f"images {start}..{start + batch_size - 1}"
    if not torch.is_tensor(features) or features.ndim != 2:
        shape = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
        raise ValueError(f"Feature extractor {name!r} must return a (N, D) tensor, got {shape} for {where}.")
    if features.shape[0] != batch_size:
        raise ValueError(
            f"Feature extractor {name!r} returned {features.shape[0]} feature vectors for a batch of "
            f"{batch_size} images ({where}); it must return one row per image."
        )
    if dim is not None and features.shape[1] != dim:
        raise ValueError(f"Feature extractor {name!r} changed its feature size from {dim} to {features.shape[1]} at {where}.")
    if not torch.isfinite(features).all():
        raise ValueError(
            f"Feature extractor {name!r} returned NaN or infinite values for {where}; check its weights "
            "and that the images are finite pixel values in [0, 1]."
        )
