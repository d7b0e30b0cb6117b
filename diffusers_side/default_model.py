"""The embedded default: a small DDPM trained on a fixed subset of scikit-learn's handwritten digits.

``--pipeline default`` and ``--reference default`` in every command resolve here. The model ships
inside the package (safetensors + model card) so the demo runs offline; the training subset is
rebuilt from `sklearn.datasets.load_digits` (bundled with scikit-learn) with the recorded indices.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
from datasets import Dataset, Features, Image, Value

DEFAULT = "default"
MODEL_NAME = "diffusers-side-default"
CARD_TEMPLATE = "default_model"
TRAINING_SECTION = "## Training"
DEFAULT_PIPELINE_DIR = Path(__file__).parent / "default_model"
SUBSET_FILE = "training_subset.json"

# How the subset is drawn (recorded in `training_subset.json` next to the weights, which is the
# authority once the model is trained): `SUBSET_SIZE` images of the 1,797 digits, chosen with
# `numpy.random.default_rng(SUBSET_SEED)`, upsampled from 8x8 to `RESOLUTION` with bicubic interpolation.
SUBSET_SIZE = 100
SUBSET_SEED = 0
RESOLUTION = 16
EMA_CONFIG_KEYS = ("decay", "inv_gamma", "min_decay", "optimization_step", "power", "update_after_step", "use_ema_warmup")


def resolve_pipeline_path(spec: str | os.PathLike) -> str:
    """Map ``"default"`` to the embedded pipeline folder; return any other path or repo id unchanged."""
    return str(DEFAULT_PIPELINE_DIR) if str(spec) == DEFAULT else str(spec)


def canonical_model_source(spec: str | os.PathLike) -> str:
    """How a model source is recorded: ``"default"`` and Hub repo ids as given, an existing local path made absolute.

    A relative path recorded as typed would name another model when read from another directory.
    """
    spec = str(spec)
    return str(Path(spec).resolve()) if spec != DEFAULT and os.path.exists(spec) else spec


def check_model_source(spec: str | os.PathLike, flag: str) -> None:
    """Refuse a local path that does not exist, before anything is loaded (``"default"`` and repo ids pass).

    Raises:
        `FileNotFoundError`: naming the flag, the path and what to pass instead.
    """
    spec = str(spec)
    if spec != DEFAULT and not os.path.exists(spec) and (os.path.isabs(spec) or spec.startswith(".")):
        raise FileNotFoundError(f"{flag} {spec!r} does not exist; pass a folder, a Hub repo id or 'default'.")


def draw_subset_indices(size: int = SUBSET_SIZE, seed: int = SUBSET_SEED) -> list[int]:
    """`size` distinct indices into the 1,797 digits, drawn with `numpy.random.default_rng(seed)`, sorted."""
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(1797, size=size, replace=False))


def subset_indices() -> list[int]:
    """Indices into `load_digits()` of the embedded model's training images (as recorded beside its weights)."""
    recorded = DEFAULT_PIPELINE_DIR / SUBSET_FILE
    if recorded.exists():
        return json.loads(recorded.read_text())["indices"]
    return draw_subset_indices()


def digit_images(indices: list[int], resolution: int = RESOLUTION) -> tuple[list[PIL.Image.Image], list[int]]:
    """The digits at `indices` as grayscale PIL images of `resolution` pixels, and their digit classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for index in indices:
        pixels = np.round(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
        images.append(PIL.Image.fromarray(pixels, mode="L").resize((resolution, resolution), PIL.Image.BICUBIC))
    return images, [int(digits.target[i]) for i in indices]


def load_training_subset() -> Dataset:
    """The embedded model's training set as a `datasets.Dataset` (columns image, digit, source_index).

    Example:

    ```py
    >>> from diffusers_side.default_model import load_training_subset
    >>> len(load_training_subset())
    100
    ```
    """
    indices = subset_indices()
    images, classes = digit_images(indices)
    features = Features({"image": Image(), "digit": Value("int64"), "source_index": Value("int64")})
    return Dataset.from_dict({"image": images, "digit": classes, "source_index": indices}, features=features)


def embedded_model_card(training_card_path: str | os.PathLike):
    """
    The embedded default's model card, built from the card `training/train_dpm.py` wrote for the run.

    The training card names the run after its output folder (``final``, ``outputs/final`` in its usage);
    this card keeps its metadata and its ``## Training`` section (table and exact command) verbatim, and
    describes the model as what it is once embedded: ``--pipeline default``.

    Args:
        training_card_path: the ``README.md`` of the training run.

    Returns:
        `huggingface_hub.ModelCard`: the card to write next to the embedded weights.

    Raises:
        `ValueError`: when the training card has no ``## Training`` section.
    """
    from huggingface_hub import ModelCard

    from .cards import render_card

    training_card = ModelCard.load(training_card_path)
    start = training_card.text.find(TRAINING_SECTION)
    if start < 0:
        raise ValueError(
            f"{training_card_path} has no {TRAINING_SECTION!r} section; pass the folder written by training/train_dpm.py."
        )
    card_data = training_card.data
    card_data.model_name = MODEL_NAME
    return render_card(
        CARD_TEMPLATE, card_data, training=training_card.text[start:].strip(), sample_grid="samples.png",
        subset_size=SUBSET_SIZE, subset_seed=SUBSET_SEED, subset_file=SUBSET_FILE, resolution=RESOLUTION,
    )


def export_default_model(train_dir: str | os.PathLike, target_dir: str | os.PathLike = DEFAULT_PIPELINE_DIR) -> Path:
    """
    Copy a `training/train_dpm.py` output folder into the package as the embedded default.

    The UNet, sample grid and training log are copied as they are; the model card is rewritten to describe
    the embedded default (`embedded_model_card`); the scheduler is stored as a `DDIMScheduler` built from
    the training `DDPMScheduler`'s config (same betas and abar_t), so that 50-step sampling is the default;
    and ``training_subset.json`` records the training images.

    Args:
        train_dir: the ``--output_dir`` of the training run.
        target_dir: where to write (defaults to the package's ``default_model/``).

    Returns:
        `Path`: the written folder.

    Example:

    ```bash
    python -m diffusers_side.default_model outputs/embedded-train            # into the package
    python -m diffusers_side.default_model outputs/embedded-train /tmp/look  # anywhere else
    ```
    """
    from .atomic_io import atomic_directory

    train_dir, target_dir = Path(train_dir), Path(target_dir)
    with atomic_directory(target_dir) as staging:
        _write_default_model(train_dir, staging)
    return target_dir


def _write_default_model(train_dir: Path, staging: Path) -> None:
    """Copy the trained pipeline into ``staging`` in the embedded layout (DDIM scheduler, no EMA keys, subset)."""
    import shutil

    from diffusers import DDIMScheduler, DDPMScheduler

    from .atomic_io import write_json_atomic
    from .cards import write_card

    shutil.copytree(train_dir / "unet", staging / "unet")
    unet_config = json.loads((staging / "unet" / "config.json").read_text())
    for key in EMA_CONFIG_KEYS:  # EMAModel.save_pretrained adds these; UNet2DModel warns about them
        unet_config.pop(key, None)
    write_json_atomic(staging / "unet" / "config.json", unet_config)
    for name in ("model_index.json", "samples.png", "train_log.json"):
        shutil.copy2(train_dir / name, staging / name)
    write_card(embedded_model_card(train_dir / "README.md"), staging)
    training_scheduler = DDPMScheduler.from_pretrained(train_dir, subfolder="scheduler")
    DDIMScheduler.from_config(training_scheduler.config).save_pretrained(staging / "scheduler")
    index = json.loads((staging / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    write_json_atomic(staging / "model_index.json", index)
    write_json_atomic(
        staging / SUBSET_FILE,
        {"source": "sklearn.datasets.load_digits", "seed": SUBSET_SEED, "size": SUBSET_SIZE, "resolution": RESOLUTION,
         "upsampling": "PIL bicubic from 8x8, pixel values x 255/16", "indices": draw_subset_indices()},
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m diffusers_side.default_model",
                                     description="Copy a training/train_dpm.py run into the package as the embedded default.")
    parser.add_argument("train_dir", help="the --output_dir of a training/train_dpm.py run")
    parser.add_argument("target_dir", nargs="?", default=str(DEFAULT_PIPELINE_DIR),
                        help="where to write (default: the package's default_model/)")
    arguments = parser.parse_args()
    export_default_model(arguments.train_dir, arguments.target_dir)
