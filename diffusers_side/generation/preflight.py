"""Checks that need only the inputs, run before any model loads (and again on the loaded model, before any output).

What the sampled images will look like is known from two small files of the target (``unet/config.json``:
``sample_size`` and ``in_channels``; ``scheduler/scheduler_config.json``: ``num_train_timesteps``), so a
command can refuse, before hours of work and before writing anything:

- more sampling steps than the target's training timesteps (the sampler would fail at its first step);
- exemplars (``--exemplars``) of another image shape than the target samples;
- a reference (``--reference``) of another shape than the target samples, when the similarity compares
  pixels (a sweep or a demo would otherwise fail at its first evaluation, after every generation);
- a reference that cannot be reached (a missing folder, or a Hub data set that is not reachable).

[`TargetFacts`] carries those facts, read from the files (`TargetFacts.from_files`, ``None`` for what a Hub
repo id does not say without a download) or from a loaded pipeline (`TargetFacts.from_pipeline`); every
check takes one, so the pre-load and the post-load checks are the same code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

from ..storage.data import check_image_source, image_channels
from ..storage.embedded import embedded_model
from ..storage.sources import ModelSource
from ..utils.state_files import LORA_CONFIG, StateFileError

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class TargetFacts:
    """What a target pipeline samples: ``(C, H, W)`` and its number of training timesteps (``None``: unknown)."""

    source: str
    sample_shape: Shape | None
    num_train_timesteps: int | None

    @classmethod
    def from_files(cls, spec: str | os.PathLike) -> "TargetFacts":
        """Read the facts from a local or embedded pipeline's config files (a LoRA-SIDE folder: from its base)."""
        folder = Path(ModelSource.parse(spec).resolved)
        if (folder / LORA_CONFIG.name).is_file():
            try:
                base = LORA_CONFIG.read(folder)["base_model"]
            except StateFileError:
                base = None
            return cls.from_files(base) if base and str(base) != str(spec) else cls(str(spec), None, None)
        unet = _read_json(folder / "unet" / "config.json")
        scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
        # a latent target's UNet samples latents: the image shape is the autoencoder's, checked when it loads
        latent = any((folder / name).is_dir() for name in ("vqvae", "vae"))
        shape = None if latent else _shape(unet.get("in_channels"), unet.get("sample_size"))
        return cls(str(spec), shape, _int(scheduler.get("num_train_timesteps")))

    @classmethod
    def from_pipeline(cls, pipe, source: str) -> "TargetFacts":
        """The facts of a loaded pipeline (a text-conditional or latent one's image shape is not its UNet's: unknown)."""
        unet = pipe.unet.config
        autoencoded = getattr(pipe, "vae", None) is not None or getattr(pipe, "vqvae", None) is not None
        shape = None if autoencoded else _shape(unet.get("in_channels"), unet.get("sample_size"))
        return cls(source, shape, _int(pipe.scheduler.config.get("num_train_timesteps")))


def _read_json(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # unknown: the loader reports a damaged config when the model loads
    return payload if isinstance(payload, dict) else {}


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _shape(channels, size) -> Shape | None:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if _int(channels) is None or not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_int(s) for s in size):
        return None
    return (channels, int(size[0]), int(size[1]))


def describe_shape(shape: Shape) -> str:
    return f"{shape[2]}x{shape[1]} with {shape[0]} channel(s)"


def check_sampling_steps(
    num_inference_steps: int, facts: TargetFacts, flag: str = "--num-inference-steps", advice: str | None = None
) -> None:
    """Refuse more sampling steps than the target's training timesteps.

    Args:
        advice: the fix, in the flags of the command that asks (default: fewer ``flag``).

    Raises:
        `ValueError`: naming the flag, both numbers and the fix.
    """
    limit = facts.num_train_timesteps
    if limit is not None and num_inference_steps > limit:
        raise ValueError(
            f"{flag} {num_inference_steps} is more than the {limit} timesteps {facts.source} was trained with; its "
            f"sampler cannot take more steps than that: {advice or f'use {flag} {limit} or fewer'}."
        )


def check_generation(settings, facts: TargetFacts | None = None) -> None:
    """The checks a generation run needs from its target: sampling steps, and the exemplars' shape.

    Args:
        settings ([`~diffusers_side.generation.settings.GenerationSettings`]): the run.
        facts ([`TargetFacts`], *optional*): the target's; read from its files by default (before loading it).
    """
    facts = facts or TargetFacts.from_files(settings.pipeline)
    check_sampling_steps(settings.num_inference_steps, facts)
    if settings.exemplars is not None:
        check_exemplar_shape(settings.exemplars, facts)


def first_image(source: str | os.PathLike) -> PIL.Image.Image | None:
    """The first image of an image source, read cheaply (``None`` for a Hub id, which would need a download)."""
    source = str(source)
    if embedded_model(source) is not None:
        from ..storage.embedded import digit_images, subset_indices

        return digit_images(subset_indices(source)[:1])[0][0]
    path = Path(source)
    if not path.is_dir():
        return None
    from datasets import Dataset, DatasetDict

    from ..storage.data import find_image_column, load_saved_dataset

    if any((path / marker).exists() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
        data = load_saved_dataset(path)  # memory-mapped: only the first row is decoded
        data = next(iter(data.values())) if isinstance(data, DatasetDict) else data
        return data[0][find_image_column(data)] if len(data) else None
    from ..storage.generation_folder import shard_files

    shards = shard_files(path)
    if shards:
        import pyarrow.parquet

        data = Dataset(pyarrow.parquet.read_table(shards[0]))
        return data[0][find_image_column(data)] if len(data) else None
    extensions = {e for e, f in PIL.Image.registered_extensions().items() if f in PIL.Image.OPEN}
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    if not files:
        return None
    try:
        return PIL.Image.open(files[0])
    except (OSError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"The first image of {source!r} ({files[0]}) cannot be read ({error}); remove or replace it.") from None


def image_shape(source: str | os.PathLike) -> Shape | None:
    """``(C, H, W)`` of the first image of a source, or ``None`` when it cannot be told cheaply."""
    image = first_image(source)
    return None if image is None else (image_channels(image), image.height, image.width)


def check_exemplar_shape(exemplars: str | os.PathLike, facts: TargetFacts) -> None:
    """Refuse exemplars of another image shape than the target samples.

    Raises:
        `ValueError`: naming both shapes and the fix.
    """
    shape = image_shape(exemplars)
    if shape is not None and facts.sample_shape is not None and shape != facts.sample_shape:
        raise ValueError(
            f"The exemplars in {exemplars} are {describe_shape(shape)} images but {facts.source} samples "
            f"{describe_shape(facts.sample_shape)}: exemplar guidance compares the two pixel by pixel; pass --exemplars "
            "with the `side label` output of this target's own samples."
        )


def check_reference_shape(reference: str, facts: TargetFacts, advice: str) -> None:
    """Refuse a reference of another image shape than the target samples (for pixel similarities).

    Args:
        advice: the fix, in the flags of the command that asks.

    Raises:
        `ValueError`: naming both shapes and ``advice``.
    """
    shape = image_shape(reference)
    if shape is not None and facts.sample_shape is not None and shape != facts.sample_shape:
        raise ValueError(
            f"The reference {reference!r} holds {describe_shape(shape)} images but {facts.source} samples "
            f"{describe_shape(facts.sample_shape)}; pixel similarities compare images of one shape: {advice}."
        )


def check_reference_reachable(reference: str) -> None:
    """Refuse a reference that cannot be read: a missing local path, or a Hub data set not reachable now.

    For a Hub id only the data set's metadata is fetched (from the cache when offline).

    Raises:
        `FileNotFoundError` / `ConnectionError`: naming the reference and the fix.
    """
    check_image_source(reference)
    if embedded_model(reference) is not None or Path(reference).exists():
        return
    from datasets import load_dataset_builder

    try:
        load_dataset_builder(reference)
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds here; all mean "cannot read it"
        raise ConnectionError(
            f"--reference {reference!r} cannot be reached ({type(error).__name__}: {error}); pass a local folder, an "
            "embedded model's training set, or connect and retry."
        ) from None


def check_target_and_reference(
    pipeline: str, reference: str, num_inference_steps: int, steps: tuple[str, str], shapes: str
) -> TargetFacts:
    """The checks of an audit that samples ``pipeline`` and scores against ``reference`` by pixels: the sampling steps,
    the reference's image shape against the target's, and the reference being reachable (in that order).

    Args:
        steps: the name of the steps setting and the fix, in the flags of the command that asks.
        shapes: the fix of a shape mismatch, in those flags.

    Returns:
        [`TargetFacts`]: the target's, read from its files.
    """
    facts = TargetFacts.from_files(pipeline)
    check_sampling_steps(num_inference_steps, facts, *steps)
    check_reference_shape(reference, facts, shapes)
    check_reference_reachable(reference)
    return facts
