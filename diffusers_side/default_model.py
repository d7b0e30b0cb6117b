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
DEFAULT_PIPELINE_DIR = Path(__file__).parent / "default_model"
SUBSET_FILE = "training_subset.json"

# How the subset is drawn (recorded in `training_subset.json` next to the weights, which is the
# authority once the model is trained): `SUBSET_SIZE` images of the 1,797 digits, chosen with
# `numpy.random.default_rng(SUBSET_SEED)`, upsampled from 8x8 to `RESOLUTION` with bicubic interpolation.
SUBSET_SIZE = 500
SUBSET_SEED = 0
RESOLUTION = 16


def resolve_pipeline_path(spec: str | os.PathLike) -> str:
    """Map ``"default"`` to the embedded pipeline folder; return any other path or repo id unchanged."""
    return str(DEFAULT_PIPELINE_DIR) if str(spec) == DEFAULT else str(spec)


def subset_indices() -> list[int]:
    """Indices into `load_digits()` of the embedded model's training images."""
    recorded = DEFAULT_PIPELINE_DIR / SUBSET_FILE
    if recorded.exists():
        return json.loads(recorded.read_text())["indices"]
    rng = np.random.default_rng(SUBSET_SEED)
    return sorted(int(i) for i in rng.choice(1797, size=SUBSET_SIZE, replace=False))


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
    500
    ```
    """
    indices = subset_indices()
    images, classes = digit_images(indices)
    features = Features({"image": Image(), "digit": Value("int64"), "source_index": Value("int64")})
    return Dataset.from_dict({"image": images, "digit": classes, "source_index": indices}, features=features)
