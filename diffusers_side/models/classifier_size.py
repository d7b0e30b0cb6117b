"""How large the surrogate classifier is: the paper's ResNet-34, the demo's ResNet-18, or one sized to the target.

The paper guides with a ResNet-34 at torchvision's width 64 (21 M parameters) whatever the target. That is a choice of
scale, not of method: on 16x16 digits its forward costs about five UNet forwards, and a guided step (forward and
backward to x_t) ten (benchmarks README, "Classifier size"). ``auto`` sizes the classifier to the images and to the
labelled set it learns from, by a rule stated here and checked in ``benchmarks/bench_classifier_size.py``:

- **Depth from the image size** (the layouts of `diffusers_side.models.classifier.RESNET_LAYOUTS`, one block per
  stage): three stages (``resnet8``, the CIFAR ResNet of He et al. 2016 with n = 1) up to `THREE_STAGES_UP_TO` px,
  whose last stage is then 4x4 or smaller, and four (``resnet10``) above. The paper's extra blocks per stage
  (ResNet-34: 3, 4, 6, 3) multiply the cost; measured on digits-rare they buy no held-out accuracy.
- **Width from the number of labelled training images N** (after the cohesion filter and the held-out split): the
  first stage has 16 channels below `WIDE_FROM` images, 32 from there and 64 from `WIDEST_FROM` on. The parameter
  count grows with the square of the width, so it grows about 4x per 10x of data (0.09 M parameters at width 16 for
  16 px, 0.34 M at 32, 1.4 M at 64).

Presets: ``"paper"`` (ResNet-34, width 64) and ``"demo"`` (ResNet-18, width 16, `side demo`'s default).

This module does not import torch, so the command-line parser can name the choices cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

CLASSIFIER_SIZES = ("auto", "demo", "paper")
# Largest image side still given three stages (16 -> 8 -> 4); larger images get a fourth.
THREE_STAGES_UP_TO = 16
# Labelled training images from which the first stage is 32, then 64, channels wide.
WIDE_FROM = 20_000
WIDEST_FROM = 200_000


@dataclass(frozen=True)
class ClassifierSize:
    """A classifier's layout (a key of `RESNET_LAYOUTS`) and the width of its first stage."""

    layers: str
    base_channels: int


PRESET_SIZES = {"paper": ClassifierSize("resnet34", 64), "demo": ClassifierSize("resnet18", 16)}


def auto_classifier_size(image_size: int, num_images: int) -> ClassifierSize:
    """The ``auto`` rule (module docstring): depth from the image side, width from the labelled training images.

    Args:
        image_size (`int`): height and width of the images (the target's ``sample_size``).
        num_images (`int`): labelled images the classifier trains on.

    Returns:
        [`ClassifierSize`]

    Raises:
        `ValueError`: an image side under 8 or no images.

    Example:

    ```py
    >>> from diffusers_side.models.classifier_size import auto_classifier_size
    >>> auto_classifier_size(16, 9_000)
    ClassifierSize(layers='resnet8', base_channels=16)
    >>> auto_classifier_size(32, 45_000)
    ClassifierSize(layers='resnet10', base_channels=32)
    ```
    """
    if image_size < 8:
        raise ValueError(f"image_size={image_size}: the classifier needs images of at least 8x8.")
    if num_images < 1:
        raise ValueError(f"num_images={num_images}: a classifier needs labelled images to train on.")
    layers = "resnet8" if image_size <= THREE_STAGES_UP_TO else "resnet10"
    base_channels = 16 if num_images < WIDE_FROM else 32 if num_images < WIDEST_FROM else 64
    return ClassifierSize(layers, base_channels)


def resolve_classifier_size(name: str, image_size: int, num_images: int) -> ClassifierSize:
    """The size named ``name`` (a `CLASSIFIER_SIZES` entry) for these images.

    Raises:
        `ValueError`: an unknown name, listing the known ones.
    """
    if name == "auto":
        return auto_classifier_size(image_size, num_images)
    if name not in PRESET_SIZES:
        raise ValueError(f"classifier size {name!r} is not one of {CLASSIFIER_SIZES}.")
    return PRESET_SIZES[name]
