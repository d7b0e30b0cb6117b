"""How large the surrogate classifier is: the paper's ResNet-34, the demo's ResNet-18, or one sized to the target.

The paper guides with a ResNet-34 at torchvision's width 64 (21 M parameters) whatever the target. That is a choice of
scale, not of method: on 16x16 digits its forward costs about five UNet forwards, and a guided step (forward and
backward to x_t) ten (benchmarks README, sections 8 and 10). ``auto`` sizes the classifier to the images and to the
labelled set it learns from, by a rule stated here and checked in ``benchmarks/bench_classifier_size.py``:

- **Depth: torchvision's ResNet-18 layout** (four stages of two blocks, `diffusers_side.models.classifier.RESNET_LAYOUTS`)
  at every image size. Measured on digits-rare (benchmarks README, section 10), one block per stage (``resnet8``, the
  rule's earlier choice for 16 px) reached a lower held-out accuracy on the attacker's own labelled synthetic images
  (70 vs 82 % with about 900 labelled images, 71 vs 84 % with about 9,000): a signal that needs no training data.
  The paper's extra blocks per stage (ResNet-34: 3, 4, 6, 3) at width 64 bought none (60 % with about 900).
- **Width from the number of labelled training images N** (after the cohesion filter and the held-out split): the
  first stage has 16 channels below `WIDE_FROM` images, 32 from there and 64 from `WIDEST_FROM` on. The parameter
  count grows with the square of the width, so it grows about 4x per 10x of data (0.71 M parameters at width 16).

Presets: ``"paper"`` (ResNet-34, width 64) and ``"demo"`` (ResNet-18, width 16, `side demo`'s default).

This module does not import torch, so the command-line parser can name the choices cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

CLASSIFIER_SIZES = ("auto", "demo", "paper")
# The layout at every image size (module docstring: one block per stage measured worse held-out accuracy).
AUTO_LAYERS = "resnet18"
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
    """The ``auto`` rule (module docstring): the ResNet-18 layout, its width from the labelled training images.

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
    ClassifierSize(layers='resnet18', base_channels=16)
    >>> auto_classifier_size(32, 45_000)
    ClassifierSize(layers='resnet18', base_channels=32)
    ```
    """
    if image_size < 8:
        raise ValueError(f"image_size={image_size}: the classifier needs images of at least 8x8.")
    if num_images < 1:
        raise ValueError(f"num_images={num_images}: a classifier needs labelled images to train on.")
    base_channels = 16 if num_images < WIDE_FROM else 32 if num_images < WIDEST_FROM else 64
    return ClassifierSize(AUTO_LAYERS, base_channels)


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
