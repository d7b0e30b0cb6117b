"""The embedded models: small DDPMs trained on fixed subsets of scikit-learn's handwritten digits.

Each ships inside the package (safetensors + model card + ``training_subset.json``) so audits run
offline, and is addressed by its name in every command: ``--pipeline NAME``, ``--reference NAME``,
``--pretrained_model_name_or_path NAME`` and ``training/train_dpm.py --dataset_name NAME``. Its
training subset is rebuilt from `sklearn.datasets.load_digits` (bundled with scikit-learn) with the
recorded indices. `EMBEDDED_MODELS` lists them:

- ``default``: 100 digits, 2,000 steps; plain sampling copies part of its training set (the demo's target).
- ``digits-rare``: 200 digits, 5,500 steps; plain sampling copies rarely, the SIDE paper's regime.

A name that is not in the table falls through to a local path or a Hub id, as any other source; the rule
(including a local folder that shadows an embedded name) is `diffusers_side.storage.sources.ModelSource`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used, so that `side --help` and argument errors stay fast
    import PIL.Image
    from datasets import Dataset

DEFAULT = "default"
DIGITS_RARE = "digits-rare"
MODEL_NAME = "diffusers-side-default"
CARD_TEMPLATE = "default_model"
TRAINING_SECTION = "## Training"
COMMAND_HEADING = "Exact command:"
DEFAULT_PIPELINE_DIR = Path(__file__).parents[1] / "default_model"
SUBSET_FILE = "training_subset.json"
LOSS_CURVE_FILE = "loss_curve.png"

# How a subset is drawn (recorded in `training_subset.json` next to the weights, which is the authority
# once the model is trained): `size` images of the 1,797 digits, chosen with
# `numpy.random.default_rng(seed)`, upsampled from 8x8 to `RESOLUTION` with bicubic interpolation.
SUBSET_SIZE = 100  # the default model's
SUBSET_SEED = 0
RESOLUTION = 16
EMA_CONFIG_KEYS = ("decay", "inv_gamma", "min_decay", "optimization_step", "power", "update_after_step", "use_ema_warmup")


@dataclass(frozen=True)
class EmbeddedModel:
    """
    One model that ships inside the package.

    Args:
        name (`str`): what every command accepts for it (``--pipeline``, ``--reference``, ``--dataset_name``).
        folder (`Path`): its pipeline folder in the package (weights, scheduler, card, ``training_subset.json``).
        subset_size (`int`): how many of the 1,797 digits it was trained on.
        subset_seed (`int`): the seed `draw_subset_indices` drew them with.
        model_name (`str`): the model name in its card's metadata.
        title (`str`): its card's heading.
        about (`str`): what it is for, in its card.
        memorization (`str`): where its measured copy rates are, in its card.
    """

    name: str
    folder: Path
    subset_size: int
    subset_seed: int
    model_name: str
    title: str
    about: str
    memorization: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    model.name: model
    for model in (
        EmbeddedModel(
            name=DEFAULT,
            folder=DEFAULT_PIPELINE_DIR,
            subset_size=SUBSET_SIZE,
            subset_seed=SUBSET_SEED,
            model_name=MODEL_NAME,
            title="diffusers-side embedded default",
            about="It is a *target* for a SIDE memorization audit, small enough to audit offline on a laptop CPU in "
            "minutes, not a digit generator.",
            memorization='`side demo` measures it; the package README ("Results on the embedded model") gives the '
            "measured table.",
        ),
        EmbeddedModel(
            name=DIGITS_RARE,
            folder=Path(__file__).parents[1] / "digits_rare_model",
            subset_size=200,
            subset_seed=1,
            model_name="diffusers-side-digits-rare",
            title="diffusers-side embedded digits-rare",
            about="It is a *target* for a SIDE memorization audit in the paper's regime: trained on twice as many "
            "digits for 2.75 times as many steps as `default`, plain sampling copies its training images rarely "
            "(the paper's Table 1 gives 0.00-0.51 % high-band copies for plain sampling), so an audit has to "
            "find rare memorized images rather than frequent ones.",
            memorization="plain sampling (`side extract --method uncond`, 5,000 images, run seed 2, normalized L2, "
            "default bands) puts 0.16 % of its generations in the high band under the 50-step DDIM sampler and 1.80 % "
            'under 50-step ancestral sampling (`--scheduler ddpm`); the package README ("Study on the rarely-copying '
            'target") gives the commands and what SIDE extracts from it.',
        ),
    )
}
EMBEDDED_CHOICES = ", ".join(repr(name) for name in EMBEDDED_MODELS)  # for error messages and --help


def embedded_model(spec: str | os.PathLike) -> EmbeddedModel | None:
    """The `EmbeddedModel` named ``spec``, or ``None`` when ``spec`` is a path or a Hub id."""
    return EMBEDDED_MODELS.get(str(spec))


def get_embedded_model(name: str) -> EmbeddedModel:
    """The `EmbeddedModel` called ``name``.

    Raises:
        `ValueError`: naming ``name`` and the embedded models.
    """
    model = embedded_model(name)
    if model is None:
        raise ValueError(f"{name!r} is not an embedded model; choose one of {EMBEDDED_CHOICES}.")
    return model


def draw_subset_indices(size: int = SUBSET_SIZE, seed: int = SUBSET_SEED) -> list[int]:
    """`size` distinct indices into the 1,797 digits, drawn with `numpy.random.default_rng(seed)`, sorted."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(1797, size=size, replace=False))


def subset_indices(name: str = DEFAULT) -> list[int]:
    """Indices into `load_digits()` of embedded model ``name``'s training images (as recorded beside its weights)."""
    model = get_embedded_model(name)
    recorded = model.folder / SUBSET_FILE
    if recorded.exists():
        return json.loads(recorded.read_text())["indices"]
    return draw_subset_indices(model.subset_size, model.subset_seed)


def digit_images(indices: list[int], resolution: int = RESOLUTION) -> tuple[list[PIL.Image.Image], list[int]]:
    """The digits at `indices` as grayscale PIL images of `resolution` pixels, and their digit classes."""
    import numpy as np
    import PIL.Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for index in indices:
        pixels = np.round(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
        images.append(PIL.Image.fromarray(pixels, mode="L").resize((resolution, resolution), PIL.Image.BICUBIC))
    return images, [int(digits.target[i]) for i in indices]


def load_training_subset(name: str = DEFAULT) -> Dataset:
    """Embedded model ``name``'s training set as a `datasets.Dataset` (columns image, digit, source_index).

    ``--reference NAME`` and ``training/train_dpm.py --dataset_name NAME`` read this.

    Example:

    ```py
    >>> from diffusers_side.storage.embedded import load_training_subset
    >>> len(load_training_subset()), len(load_training_subset("digits-rare"))
    (100, 200)
    ```
    """
    from datasets import Dataset, Features, Image, Value

    indices = subset_indices(name)
    images, classes = digit_images(indices)
    features = Features({"image": Image(), "digit": Value("int64"), "source_index": Value("int64")})
    return Dataset.from_dict({"image": images, "digit": classes, "source_index": indices}, features=features)


def check_same_training_data(folder: str | os.PathLike, name: str) -> None:
    """
    Check that a `save_to_disk` folder holds embedded model ``name``'s training set: the same images, pixel for
    pixel (same size and mode), with the same digits and source indices, in the same order.

    Raises:
        `ValueError`: naming the first difference.
    """
    from .data import load_saved_dataset

    copy, subset = load_saved_dataset(folder), load_training_subset(name)
    if len(copy) != len(subset):
        raise ValueError(f"{folder} holds {len(copy)} images, {name!r} {len(subset)}; it is not a copy of {name!r}.")
    for column in ("digit", "source_index"):
        if copy[column] != subset[column]:
            raise ValueError(f"{folder}'s {column} column differs from {name!r}'s; it is not a copy of {name!r}.")
    for row, (ours, theirs) in enumerate(zip(copy["image"], subset["image"])):
        if (ours.mode, ours.size, ours.tobytes()) != (theirs.mode, theirs.size, theirs.tobytes()):
            raise ValueError(f"{folder}'s image {row} differs from {name!r}'s; it is not a copy of {name!r}.")


def plot_loss_curve(train_log: dict, path: str | os.PathLike, title: str) -> Path:
    """
    Plot the training loss of a `training/train_dpm.py` run from its ``train_log.json`` history.

    Args:
        train_log (`dict`): the parsed ``train_log.json`` (``history``: one entry per logging interval,
            with its last ``step`` and the mean ``loss`` over its ``steps`` steps).
        path: the PNG to write.
        title (`str`): the figure's title.

    Returns:
        `Path`: ``path``.

    Raises:
        `ValueError`: when the log has no history.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.atomic_io import atomic_path

    history = train_log.get("history") or []
    if not history:
        raise ValueError("train_log.json has no loss history; pass a run written by training/train_dpm.py.")
    figure, axis = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    axis.plot([entry["step"] for entry in history], [entry["loss"] for entry in history], marker="o", markersize=3)
    axis.set_yscale("log")
    axis.set_xlabel("training step")
    axis.set_ylabel("MSE loss (mean over the logging interval)")
    axis.set_title(title)
    axis.grid(alpha=0.3, which="both")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return Path(path)


def embedded_model_card(training_card_path: str | os.PathLike, name: str = DEFAULT, trained_on: str | None = None):
    """
    Embedded model ``name``'s model card, built from the card `training/train_dpm.py` wrote for the run.

    The training card names the run after its output folder (``final``, ``outputs/final`` in its usage);
    this card keeps its metadata and its ``## Training`` section (table and exact command) verbatim, and
    describes the model as what it is once embedded: ``--pipeline NAME``. When the run read a
    `save_to_disk` copy of the embedded subset (``trained_on``, as written in the training card, checked
    with `check_same_training_data` by the caller), the section names ``NAME`` instead and says so.

    Args:
        training_card_path: the ``README.md`` of the training run.
        name (`str`): the embedded model's name (a key of `EMBEDDED_MODELS`).
        trained_on (`str`, *optional*): the ``--dataset_name`` the run used, to be replaced by ``name``.

    Returns:
        `huggingface_hub.ModelCard`: the card to write next to the embedded weights.

    Raises:
        `ValueError`: when the training card has no ``## Training`` section, or does not name ``trained_on``.
    """
    from huggingface_hub import ModelCard

    from .cards import render_card

    model = get_embedded_model(name)
    training_card = ModelCard.load(training_card_path)
    start = training_card.text.find(TRAINING_SECTION)
    if start < 0:
        raise ValueError(
            f"{training_card_path} has no {TRAINING_SECTION!r} section; pass the folder written by training/train_dpm.py."
        )
    training = training_card.text[start:].strip()
    if trained_on is not None:
        training = name_embedded_data(training, trained_on, name)
    card_data = training_card.data
    card_data.model_name = model.model_name
    return render_card(
        CARD_TEMPLATE, card_data, training=training, sample_grid="samples.png", loss_curve=LOSS_CURVE_FILE,
        name=model.name, title=model.title, about=model.about, memorization=model.memorization,
        subset_size=model.subset_size, subset_seed=model.subset_seed, subset_file=SUBSET_FILE, resolution=RESOLUTION,
    )


def name_embedded_data(training: str, trained_on: str, name: str) -> str:
    """The training section with its data set ``trained_on`` (a copy of ``name``'s subset) named ``name``, and why."""
    replacements = {f"--dataset_name {trained_on} ": f"--dataset_name {name} ", f"| Data set | `{trained_on}`": f"| Data set | `{name}`"}
    for old, new in replacements.items():
        if old not in training:
            raise ValueError(f"The training card does not contain {old.strip()!r}; pass the --dataset_name the run used.")
        training = training.replace(old, new)
    note = (
        f"The run read `{trained_on}`, a `save_to_disk` copy of this subset; its images (pixel for pixel), digits "
        f"and source indices equal those of `--dataset_name {name}` (checked by the export), so the command "
        f"names `{name}`.\n\n{COMMAND_HEADING}"
    )
    return training.replace(COMMAND_HEADING, note, 1)


def export_embedded_model(
    train_dir: str | os.PathLike,
    target_dir: str | os.PathLike | None = None,
    name: str = DEFAULT,
    training_data: str | os.PathLike | None = None,
) -> Path:
    """
    Copy a `training/train_dpm.py` output folder into the package as embedded model ``name``.

    The UNet, sample grid and training log are copied as they are; the loss curve is plotted from the
    log; the model card is rewritten to describe the embedded model (`embedded_model_card`); the scheduler
    is stored as a `DDIMScheduler` built from the training `DDPMScheduler`'s config (same betas and
    abar_t), so that 50-step sampling is the default; and ``training_subset.json`` records the training
    images.

    Args:
        train_dir: the ``--output_dir`` of the training run.
        target_dir: where to write (defaults to the model's package folder).
        name (`str`): the embedded model's name (a key of `EMBEDDED_MODELS`).
        training_data (*optional*): the `save_to_disk` folder the run read, when it was a copy of the
            model's subset; it is checked to hold the same images (`check_same_training_data`) and the card
            then names ``--dataset_name NAME``.

    Returns:
        `Path`: the written folder.

    Raises:
        `ValueError`: for an unknown ``name``, or ``training_data`` that is not a copy of the subset.

    Example:

    ```bash
    python -m diffusers_side.storage.embedded outputs/embedded-train            # into the package, as "default"
    python -m diffusers_side.storage.embedded outputs/embedded-train /tmp/look  # anywhere else
    python -m diffusers_side.storage.embedded outputs/rare-train --name digits-rare --training-data outputs/rare-data
    ```
    """
    from ..utils.atomic_io import atomic_directory

    model = get_embedded_model(name)
    train_dir = Path(train_dir)
    target_dir = Path(target_dir) if target_dir is not None else model.folder
    trained_on = None
    if training_data is not None:
        check_same_training_data(training_data, name)
        trained_on = json.loads((train_dir / "run_config.json").read_text())["dataset_name"]
    with atomic_directory(target_dir) as staging:
        _write_embedded_model(train_dir, staging, model, trained_on)
    return target_dir


def _write_embedded_model(train_dir: Path, staging: Path, model: EmbeddedModel, trained_on: str | None) -> None:
    """Copy the trained pipeline into ``staging`` in the embedded layout (DDIM scheduler, no EMA keys, subset)."""
    import shutil

    from diffusers import DDIMScheduler, DDPMScheduler

    from ..utils.atomic_io import write_json_atomic
    from .cards import write_card

    shutil.copytree(train_dir / "unet", staging / "unet")
    unet_config = json.loads((staging / "unet" / "config.json").read_text())
    for key in EMA_CONFIG_KEYS:  # EMAModel.save_pretrained adds these; UNet2DModel warns about them
        unet_config.pop(key, None)
    write_json_atomic(staging / "unet" / "config.json", unet_config)
    for file_name in ("model_index.json", "samples.png", "train_log.json"):
        shutil.copy2(train_dir / file_name, staging / file_name)
    plot_loss_curve(json.loads((train_dir / "train_log.json").read_text()), staging / LOSS_CURVE_FILE,
                    f"{model.name}: training loss")
    write_card(embedded_model_card(train_dir / "README.md", model.name, trained_on), staging)
    training_scheduler = DDPMScheduler.from_pretrained(train_dir, subfolder="scheduler")
    DDIMScheduler.from_config(training_scheduler.config).save_pretrained(staging / "scheduler")
    index = json.loads((staging / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    write_json_atomic(staging / "model_index.json", index)
    write_json_atomic(
        staging / SUBSET_FILE,
        {"source": "sklearn.datasets.load_digits", "seed": model.subset_seed, "size": model.subset_size,
         "resolution": RESOLUTION, "upsampling": "PIL bicubic from 8x8, pixel values x 255/16",
         "indices": draw_subset_indices(model.subset_size, model.subset_seed)},
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m diffusers_side.storage.embedded",
                                     description="Copy a training/train_dpm.py run into the package as an embedded model.")
    parser.add_argument("train_dir", help="the --output_dir of a training/train_dpm.py run")
    parser.add_argument("target_dir", nargs="?", default=None, help="where to write (default: the model's package folder)")
    parser.add_argument("--name", default=DEFAULT, choices=list(EMBEDDED_MODELS), help="the embedded model (default: default)")
    parser.add_argument("--training-data", default=None, metavar="FOLDER",
                        help="the save_to_disk folder the run read, when it was a copy of the model's subset: checked, "
                        "then the card's command names --dataset_name NAME")
    arguments = parser.parse_args()
    export_embedded_model(arguments.train_dir, arguments.target_dir, arguments.name, arguments.training_data)
