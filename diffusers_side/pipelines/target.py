"""The model under audit, described once for every trainer and command: [`AuditTarget`].

A target is a diffusers pipeline folder (or embedded name, or Hub repo id) holding a UNet and a scheduler, and -
for a latent target - the autoencoder whose latents the UNet models:

- ``"pixel"``: `UNet2DModel` + scheduler (`DDPMPipeline`, `DDIMPipeline`, a `SIDEPipeline`, the embedded models);
- ``"latent"``: `UNet2DModel` + scheduler + ``vqvae`` (a `VQModel` or an `AutoencoderKL`), as diffusers'
  `LDMPipeline` saves it;
- ``"text"``: a text-conditional pipeline (`UNet2DConditionModel` + ``vae`` + text encoder), for LoRA-SIDE only.

[`AuditTarget`] gives what the audit needs from it: the UNet and scheduler, the sample shape the UNet denoises,
the noise schedule (abar_t, the training-time `DDPMScheduler`) and prediction type, and the codec between
pixels and the UNet's space (`diffusers_side.models.codec`). Adding a target architecture means teaching
[`target_kind`] and [`AuditTarget.load`] its layout and giving it a codec.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler, DiffusionPipeline

from ..models.codec import PixelCodec, pixel_codec
from ..models.lora import is_lora_folder, read_lora_config
from ..storage.sources import ModelSource
from .core import AUTOENCODER_COMPONENTS
from .pipeline_side import SIDEPipeline
from .pipeline_side_lora_text import load_text_base

PIXEL, LATENT, TEXT = "pixel", "latent", "text"


def target_kind(spec: str | os.PathLike | ModelSource, what: str = "--pretrained_model_name_or_path") -> str:
    """``"pixel"``, ``"latent"`` or ``"text"``, from the pipeline's ``model_index.json`` alone (no weights are read).

    Raises:
        `ValueError`: ``spec`` is a LoRA-SIDE result (naming its base), or its index names no UNet.
    """
    source = spec if isinstance(spec, ModelSource) else ModelSource.parse(spec, what=what)
    if is_lora_folder(source.resolved):
        base = _lora_base(source)
        raise ValueError(
            f"{what} {source.spec!r} is a LoRA-SIDE result (adapters on {base!r}), not a model to audit: pass its base "
            f"model {base!r} instead."
        )
    index = DiffusionPipeline.load_config(source.name_or_path, revision=source.revision)
    if "unet" not in index:
        raise ValueError(f"{what} {source.spec!r} has no unet in its model_index.json; a SIDE target is a UNet pipeline.")
    if "text_encoder" in index:
        return TEXT
    return LATENT if any(_component_class(index, name) for name in AUTOENCODER_COMPONENTS) else PIXEL


@dataclass
class AuditTarget:
    """
    The audited model: its pipeline, where it came from, and the codec between pixels and the UNet's space.

    Args:
        pipeline ([`DiffusionPipeline`]): a `SIDEPipeline` (pixel or latent target) or a text-conditional pipeline.
        codec ([`~diffusers_side.models.codec.PixelCodec`]): pixels <-> samples (the identity for pixel targets).
        source ([`~diffusers_side.storage.sources.ModelSource`], *optional*): where it was loaded from.
        kind (`str`): ``"pixel"``, ``"latent"`` or ``"text"``.

    Example:

    ```py
    >>> from diffusers_side.pipelines.target import AuditTarget
    >>> target = AuditTarget.load("default")
    >>> target.kind, target.sample_shape, target.image_shape, target.prediction_type
    ('pixel', (1, 16, 16), (1, 16, 16), 'epsilon')
    ```
    """

    pipeline: DiffusionPipeline
    codec: PixelCodec
    source: ModelSource | None = None
    kind: str = PIXEL

    @classmethod
    def load(
        cls,
        spec: str | os.PathLike,
        revision: str | None = None,
        allow_pickle: bool = False,
        what: str = "--pretrained_model_name_or_path",
        recorded: bool = False,
    ) -> "AuditTarget":
        """
        Load the target ``spec`` names (an embedded name, a folder or ``user/repo[@rev]``), whatever its kind.

        Args:
            spec: the pipeline to audit.
            revision (`str`, *optional*): the Hub revision of a repo id.
            allow_pickle (`bool`): accept pickled ``.bin`` weights (trusted checkpoints only).
            what (`str`): how error messages name the source.
            recorded (`bool`): ``spec`` comes from a record (``generation.json``): read it with
                `ModelSource.from_record` (a bare embedded name is that model even where a folder shadows it).

        Raises:
            `ValueError`: a LoRA-SIDE result or a pipeline without a UNet (see [`target_kind`]).
        """
        source = ModelSource.from_record(str(spec), what) if recorded else ModelSource.parse(spec, revision, what=what)
        kind = target_kind(source, what)
        use_safetensors = None if allow_pickle else True
        if kind == TEXT:
            pipeline = load_text_base(source.resolved, use_safetensors)
            return cls(pipeline, pixel_codec(pipeline.vae), source, kind)
        pipeline = SIDEPipeline.from_pretrained(source.name_or_path, revision=source.revision, use_safetensors=use_safetensors)
        return cls(pipeline, pixel_codec(pipeline.vqvae), source, kind)

    @classmethod
    def from_pipeline(cls, pipeline: DiffusionPipeline, source: ModelSource | None = None) -> "AuditTarget":
        """The target a loaded pipeline holds (its ``vqvae`` or, text-conditional, its ``vae`` makes it latent)."""
        if "text_encoder" in pipeline.components:
            return cls(pipeline, pixel_codec(pipeline.vae), source, TEXT)
        autoencoder = getattr(pipeline, "vqvae", None)
        return cls(pipeline, pixel_codec(autoencoder), source, LATENT if autoencoder is not None else PIXEL)

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipeline.unet

    @property
    def scheduler(self):
        return self.pipeline.scheduler

    @property
    def autoencoder(self) -> torch.nn.Module | None:
        """The `VQModel` / `AutoencoderKL` of a latent or text target, else ``None``."""
        return self.codec.autoencoder

    @functools.cached_property
    def noise_scheduler(self) -> DDPMScheduler:
        """The training-time forward process: any scheduler config gives the same betas, hence the same abar_t, and
        DDPM's ``add_noise`` is sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, the input the classifier is defined on."""
        return DDPMScheduler.from_config(self.scheduler.config)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for t = 0 .. T-1."""
        return self.noise_scheduler.alphas_cumprod

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``."""
        return self.scheduler.config.get("prediction_type", "epsilon")

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample the UNet denoises (latents for a latent target)."""
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image in pixel space (what its samples decode to, what the data sets hold)."""
        return self.codec.image_shape(self.sample_shape)

    @property
    def reference(self) -> str | None:
        """How records name the target (`ModelSource.canonical`), ``None`` when built from a pipeline object."""
        return None if self.source is None else self.source.canonical()

    @property
    def hub_id(self) -> str | None:
        """The Hub repo id for card metadata (``base_model``), ``None`` for embedded and local targets."""
        return None if self.source is None else self.source.hub_id

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Model-space images in ``[-1, 1]`` -> the samples the UNet models (see `PixelCodec.encode`)."""
        return self.codec.encode(images, generator)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """The UNet's samples -> model-space images nominally in ``[-1, 1]``."""
        return self.codec.decode(samples)

    def side_pipeline(self, classifier: torch.nn.Module | None = None) -> SIDEPipeline:
        """A `SIDEPipeline` of this target's UNet, scheduler and autoencoder with ``classifier`` (pixel or latent only)."""
        if self.kind == TEXT:
            raise ValueError(
                f"{self.reference or 'This target'} is a text-conditional pipeline, which the classifier branch does not "
                "sample; fine-tune it with `side train-lora` (LoRA-SIDE) instead."
            )
        return SIDEPipeline(self.unet, self.scheduler, classifier, self.autoencoder)


def _component_class(index: dict, name: str) -> str | None:
    entry = index.get(name)
    return entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None


def _lora_base(source: ModelSource) -> str:
    return str(read_lora_config(source.local_path()).get("base_model"))
