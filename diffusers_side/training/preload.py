"""Training batches from images decoded once, instead of decoding the PNG bytes of every batch again.

`~diffusers_side.training.common.image_dataloader` decodes each batch's images when it is drawn (a `datasets`
transform). For the small images and small classifiers of an audit that decoding is a large share of a step (about
8 ms per batch of 64 16x16 images against about 25 ms for a ``resnet8`` step; benchmarks README, "Speed cuts"), and
it is repeated every epoch. `preloaded_dataloader` decodes the whole set once, with the same function, into one
tensor, and serves the same ``{"pixel_values", **extra_columns}`` rows: the loader draws the same indices (the same
sampler, seeded by accelerate as before), so the batches, and the trained weights, are identical.

Sets whose decoded size exceeds ``max_bytes`` (default 1 GiB: e.g. 10,000 64x64 RGB images take 0.5 GiB) keep the
per-batch decoding.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..storage.data import images_to_tensor
from .common import PIXEL_VALUES, ImageData, image_dataloader

PRELOAD_MAX_BYTES = 1 << 30
DECODE_CHUNK = 4096  # images decoded per call while preloading


class PreloadedImages(torch.utils.data.Dataset):
    """A labelled image set held as tensors: row ``i`` is ``{"pixel_values": image i in [-1, 1], column: value i}``.

    Args:
        data ([`~diffusers_side.training.common.ImageData`]): the data set, its image column, resolution and channels.
        center_crop (`bool`): as for `image_dataloader`.
        extra_columns (`Sequence[str]`): further columns to serve (e.g. the label), as tensors.
    """

    def __init__(self, data: ImageData, center_crop: bool, extra_columns: Sequence[str] = ()):
        images = data.dataset[data.image_column] if len(data.dataset) else []
        chunks = [
            images_to_tensor(images[start : start + DECODE_CHUNK], data.resolution, data.channels, center_crop) * 2 - 1
            for start in range(0, len(images), DECODE_CHUNK)
        ]
        self.pixels = torch.cat(chunks)
        self.columns = {column: torch.as_tensor(data.dataset[column][:]) for column in extra_columns}

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {PIXEL_VALUES: self.pixels[index], **{name: values[index] for name, values in self.columns.items()}}


def decoded_bytes(data: ImageData) -> int:
    """Bytes the decoded float32 images of ``data`` take."""
    return len(data.dataset) * data.channels * data.resolution**2 * 4


def preloaded_dataloader(
    data: ImageData,
    batch_size: int,
    center_crop: bool,
    num_workers: int = 0,
    extra_columns: Sequence[str] = (),
    shuffle: bool = True,
    max_bytes: int = PRELOAD_MAX_BYTES,
) -> torch.utils.data.DataLoader:
    """`image_dataloader`'s batches, from images decoded once when they fit in ``max_bytes`` (see the module docstring).

    Example:

    ```py
    >>> from diffusers_side.training.common import load_training_images
    >>> from diffusers_side.training.preload import preloaded_dataloader
    >>> data = load_training_images("side-demo/labels")
    >>> batch = next(iter(preloaded_dataloader(data, 64, False, extra_columns=["label"])))
    >>> batch["pixel_values"].shape, batch["label"].shape
    ```
    """
    if len(data.dataset) == 0 or decoded_bytes(data) > max_bytes:
        return image_dataloader(data, batch_size, center_crop, num_workers, extra_columns, shuffle)
    dataset = PreloadedImages(data, center_crop, extra_columns)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)
