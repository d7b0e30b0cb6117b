"""The target's side of training: loading the audited model once and fitting the labelled images to it.

Both SIDE branches (``side train-classifier`` and ``side train-lora``) train on the target's own samples, so
they share [`load_training_target`] (one [`~diffusers_side.pipelines.target.AuditTarget`], any kind) and
[`match_target`] (the images must have the shape the target samples, in pixel space).
"""

from __future__ import annotations

import argparse
import dataclasses

from ..pipelines.target import AuditTarget, target_kind
from ..storage.sources import ModelSource
from .common import ImageData

TARGET_FLAG = "--pretrained_model_name_or_path"


def target_source(args: argparse.Namespace) -> ModelSource:
    """``--pretrained_model_name_or_path`` (with ``--revision``) as a `ModelSource`; nothing is loaded.

    Raises:
        `FileNotFoundError` / `ValueError`: a missing path, a shadowed embedded name, a bad repo id or revision.
    """
    return ModelSource.parse(args.pretrained_model_name_or_path, getattr(args, "revision", None), what=TARGET_FLAG)


def check_target_kind(args: argparse.Namespace, allowed: tuple[str, ...], hint: str) -> str:
    """The target's kind from its ``model_index.json`` (no weights read), refused unless it is one of ``allowed``.

    Raises:
        `ValueError`: naming the kind and ``hint`` (what to do instead); a LoRA-SIDE result is refused by
            [`~diffusers_side.pipelines.target.target_kind`] itself.
    """
    source = target_source(args)
    kind = target_kind(source, TARGET_FLAG)
    if kind not in allowed:
        raise ValueError(f"{TARGET_FLAG} {source.spec!r} is a {kind} target; {hint}")
    return kind


def load_training_target(args: argparse.Namespace) -> AuditTarget:
    """The audited model of a training run, loaded once (safetensors only)."""
    source = target_source(args)
    return AuditTarget.load(source.resolved, what=TARGET_FLAG)


def match_target(args: argparse.Namespace, data: ImageData, target: AuditTarget) -> ImageData:
    """
    The training images at the size and channels of the target's images (pixel space; a latent target's are
    what its autoencoder decodes to).

    Images of another size or channel count are refused unless ``--resolution`` / ``--channels`` asks for the
    conversion explicitly (a model trained on resized images of another model fits the target badly).

    Raises:
        `ValueError`: naming the sizes and the flag that converts them.
    """
    channels, height, width = target.image_shape
    if height != width:
        raise ValueError(f"The target samples {height}x{width} images; training on non-square targets is not supported.")
    for flag, expected, found in (("resolution", height, data.resolution), ("channels", channels, data.channels)):
        given = getattr(args, flag)
        if given is not None and given != expected:
            raise ValueError(
                f"--{flag} {given} differs from the target's {flag} {expected}: training uses the target's own samples; "
                f"drop --{flag} or pass --{flag} {expected}."
            )
        if given is None and found != expected:
            shown, wanted = (f"{v}x{v}" if flag == "resolution" else f"{v}-channel" for v in (found, expected))
            raise ValueError(
                f"The images of {args.train_data_dir} are {shown} but the target samples {wanted} images: label samples "
                f"of this target, or pass --{flag} {expected} to convert them on purpose."
            )
    return dataclasses.replace(data, resolution=height, channels=channels)
