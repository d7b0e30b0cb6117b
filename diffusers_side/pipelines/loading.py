"""Build the `SIDEPipeline` a command works on: the target, a scheduler swap, an extra classifier."""

from __future__ import annotations

import hashlib
import os

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from ..models.classifier import TimeDependentClassifier
from ..models.lora import is_lora_folder, read_lora_config
from ..storage.sources import ModelSource, resolve_folder
from ..utils.arg_types import SCHEDULER_NAMES
from .pipeline_side import SIDEPipeline
from .pipeline_side_lora import SIDELoRAPipeline
from .pipeline_side_lora_text import SIDELoRATextPipeline

# Names accepted by --scheduler; each is built with `from_config` from the target's own scheduler, so the
# noise schedule (betas, abar_t) and prediction type stay those the model was trained with.
SCHEDULERS = dict(
    zip(
        SCHEDULER_NAMES,
        (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
         DPMSolverMultistepScheduler, UniPCMultistepScheduler),
        strict=True,
    )
)


def load_classifier(path: str | os.PathLike, allow_pickle: bool = False) -> TimeDependentClassifier:
    """A classifier from its own folder, or from the ``classifier/`` folder of a saved pipeline (or their repo ids)."""
    path = resolve_folder(path, "--classifier")
    subfolder = "classifier" if (path / "classifier" / "config.json").exists() else None
    if not (path / (subfolder or "") / "config.json").exists():
        raise FileNotFoundError(f"No classifier found at {path} (expected config.json or classifier/config.json).")
    return TimeDependentClassifier.from_pretrained(path, subfolder=subfolder, use_safetensors=_use_safetensors(allow_pickle))


def _use_safetensors(allow_pickle: bool) -> bool | None:
    """diffusers' ``use_safetensors``: ``True`` refuses pickle; ``None`` prefers safetensors and allows pickle."""
    return None if allow_pickle else True


def lora_pipeline_class(spec: str | os.PathLike) -> type[SIDELoRAPipeline] | type[SIDELoRATextPipeline]:
    """The pipeline class a LoRA-SIDE folder or repo was saved from (its ``side_lora.json`` names it)."""
    name = read_lora_config(resolve_folder(spec, "LoRA-SIDE folder"))["pipeline_class"]
    return {cls.__name__: cls for cls in (SIDELoRAPipeline, SIDELoRATextPipeline)}[name]


def load_pipeline(
    spec: str | os.PathLike,
    scheduler: str | None = None,
    classifier: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    device: str | torch.device | None = None,
) -> SIDEPipeline | SIDELoRAPipeline | SIDELoRATextPipeline:
    """
    Load the pipeline to audit, or a LoRA-SIDE result (a folder or repo holding ``side_lora.json``) with its base.

    Args:
        spec: an embedded model's name (``"default"``, ``"digits-rare"``), a folder, or a Hub repo id (``user/repo@rev``),
            decided by `diffusers_side.storage.sources.ModelSource.parse`.
        scheduler (`str`, *optional*): one of `SCHEDULERS` to sample with instead of the saved scheduler.
        classifier (*optional*): a classifier folder (or pipeline folder) replacing the pipeline's own.
        allow_pickle (`bool`): accept pickled `.bin` weights (only for checkpoints you trust).
        device (*optional*): where to run.

    Returns:
        [`SIDEPipeline`], or [`SIDELoRAPipeline`] / [`SIDELoRATextPipeline`] for a LoRA-SIDE result.
    """
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler {scheduler!r} is not supported; choose one of {sorted(SCHEDULERS)}.")
    source = ModelSource.parse(spec, what="--pipeline")
    if classifier is not None:
        ModelSource.parse(classifier, what="--classifier")
    lora = is_lora_folder(source.resolved)
    if lora and classifier is not None:
        raise ValueError(f"{spec} is a LoRA-SIDE result, which samples without a classifier; drop --classifier.")
    pipeline_class = lora_pipeline_class(source.resolved) if lora else SIDEPipeline
    pipe = pipeline_class.from_pretrained(source.resolved, use_safetensors=_use_safetensors(allow_pickle))
    if scheduler is not None:
        pipe.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
    if classifier is not None:
        pipe = SIDEPipeline(**{**pipe.components, "classifier": load_classifier(classifier, allow_pickle)})
    return pipe.to(device) if device is not None else pipe


def weights_fingerprint(model: torch.nn.Module) -> str:
    """The sha256 of a model's weights (names, dtypes, shapes and bytes of its state dict, in name order).

    Recorded in ``generation.json`` so a resumed run or a later ``side label`` can tell that the model
    behind a path is still the one that generated the images.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
