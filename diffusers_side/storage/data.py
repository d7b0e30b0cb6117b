"""Image data sets in and out: loading anything `datasets` can read, and turning images into tensors.

Every command of the plugin that reads images (training, labelling, evaluation) goes through
[`load_image_dataset`] and [`images_to_tensor`], so they all accept the same sources and agree on
the pixel conventions:

- tensors in *pixel space* are float32 ``(N, C, H, W)`` in ``[0, 1]``;
- tensors in *model space* are the same images mapped to ``[-1, 1]`` (``2 * x - 1``), the range the
  diffusers UNets are trained on.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import PIL.Image
import pyarrow
import pyarrow.parquet
import torch
from datasets import Dataset, DatasetDict, Image, load_dataset, load_from_disk

from .image_files import to_8bit
from .sources import DATASET, EMBEDDED, HUB, ModelSource


def load_image_dataset(name_or_path: str | os.PathLike, split: str = "train") -> Dataset:
    """Load an image data set from any source the plugin accepts.

    Args:
        name_or_path (`str` or `os.PathLike`):
            One of: an embedded model's name (``"default"``, ``"digits-rare"``: its training subset); a directory written by
            `Dataset.save_to_disk`; a directory of shards written by ``side synthesize`` /
            ``side extract``; an ``imagefolder`` directory of image files; or a Hub data set id.
            Local sources are held in memory: no arrow copy of the images is written to the datasets
            cache or beside them, by the load or by later `map`/`cast`/`train_test_split` calls
            (a Hub data set is downloaded to the Hugging Face cache as usual).
        split (`str`, defaults to `"train"`):
            The split to return when the source holds several.

    Returns:
        `datasets.Dataset`: the requested split.

    Example:

    ```py
    >>> from diffusers_side.storage.data import load_image_dataset
    >>> ds = load_image_dataset("default")
    >>> ds[0]["image"].size
    (16, 16)
    ```
    """
    source = str(name_or_path)
    try:
        dataset = _load(name_or_path, split)
    except (IndexError, ValueError) as error:
        if "no data" not in str(error) and not isinstance(error, IndexError):
            raise
        raise ValueError(f"Image data set {source!r} is empty; it holds no images.") from error
    if len(dataset) == 0:
        raise ValueError(f"Image data set {source!r} is empty; it holds no images.")
    return dataset


def check_image_source(name_or_path: str | os.PathLike) -> ModelSource:
    """Cheaply refuse a source [`load_image_dataset`] cannot read, by the one rule of `ModelSource.parse`.

    Embedded names, existing folders and Hub ids pass (a Hub id is only checked when it is loaded).

    Returns:
        [`~diffusers_side.storage.sources.ModelSource`]: what the source is.

    Raises:
        `FileNotFoundError`: naming the path and what to pass instead; `ValueError`: an embedded name shadowed by
            a folder of the same name, or no valid Hub id.
    """
    return ModelSource.parse(name_or_path, what="Image data set", repo_type=DATASET)


def load_saved_dataset(path: str | os.PathLike, keep_in_memory: bool = False) -> Dataset | DatasetDict:
    """`datasets.load_from_disk`, with a damaged folder named in one line instead of a JSON or Arrow traceback.

    Args:
        path: a folder written by ``save_to_disk`` (a `side label` output, exemplars, a saved data set).
        keep_in_memory (`bool`): as in `load_from_disk`.

    Raises:
        `ValueError`: its ``state.json``, ``dataset_info.json`` or an arrow file is truncated, edited or missing.
    """
    try:
        return load_from_disk(str(path), keep_in_memory=keep_in_memory)
    except (ValueError, OSError, KeyError, TypeError, pyarrow.ArrowException) as error:
        raise ValueError(
            f"{path} is a damaged saved data set ({type(error).__name__}: {error}): its state.json, dataset_info.json "
            "or an arrow file is truncated, edited or missing; write it again with the command that made it."
        ) from None


def _load(name_or_path: str | os.PathLike, split: str) -> Dataset:
    source = check_image_source(name_or_path)
    if source.kind == EMBEDDED:
        from .embedded import load_training_subset

        return load_training_subset(source.location)
    path = Path(source.location)
    if source.kind != HUB:
        if any((path / marker).exists() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return _pick_split(load_saved_dataset(path, keep_in_memory=True), split, source.spec)
        from .generation_folder import shard_files

        shards = shard_files(path)
        if shards:
            return Dataset(pyarrow.concat_tables([pyarrow.parquet.read_table(shard) for shard in shards]))
        # The imagefolder builder always prepares arrow files: give it a throw-away cache and keep the result in memory.
        with tempfile.TemporaryDirectory(prefix="side-imagefolder-") as cache_dir:
            data = load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir, keep_in_memory=True)
            return _pick_split(data, split, source.spec)
    return load_dataset(source.location, revision=source.revision, split=split)


def _pick_split(data: Dataset | DatasetDict, split: str, source: str) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if split not in data:
        raise ValueError(f"Data set {source!r} has no split {split!r}; its splits are {sorted(data)}.")
    return data[split]


def find_image_column(dataset: Dataset, column: str | None = None) -> str:
    """Return the name of the column that holds the images.

    Args:
        dataset (`datasets.Dataset`): the data set to inspect.
        column (`str`, *optional*): a column the user named explicitly; it is checked to exist.

    Returns:
        `str`: the first column typed as `datasets.Image`, else a column called ``image`` or ``img``.

    Raises:
        `ValueError`: when there is no such column; the message lists the columns that exist.
    """
    columns = list(dataset.column_names)
    if column is not None:
        if column not in columns:
            raise ValueError(f"Image column {column!r} not found; the data set has columns {columns}.")
        return column
    for name, feature in dataset.features.items():
        if isinstance(feature, Image):
            return name
    for name in ("image", "img"):
        if name in columns:
            return name
    raise ValueError(
        f"The data set has no image column; it has columns {columns}. "
        "Store images in a `datasets.Image` column or name the column with --image_column."
    )


def image_channels(image: PIL.Image.Image) -> int:
    """1 for grayscale images (modes L, 1, I, F, LA), 3 otherwise."""
    return 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3


def preprocess_image(
    image: PIL.Image.Image, resolution: int | None = None, channels: int | None = None, center_crop: bool = False
) -> PIL.Image.Image:
    """Convert an image to the requested channels and square resolution.

    With ``center_crop`` the shorter side is resized to ``resolution`` and the centre is cropped
    (aspect ratio kept); otherwise the image is resized to ``resolution x resolution``. Resizing uses
    bicubic interpolation, as diffusers' training examples do. 16-bit and float images are first scaled to
    8 bits (`diffusers_side.storage.image_files.to_8bit`), never clipped.
    """
    image = to_8bit(image)
    if channels is not None:
        image = image.convert("L" if channels == 1 else "RGB")
    if resolution is None or image.size == (resolution, resolution):
        return image
    if center_crop:
        width, height = image.size
        scale = resolution / min(width, height)
        image = image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))), PIL.Image.BICUBIC)
        left = (image.size[0] - resolution) // 2
        top = (image.size[1] - resolution) // 2
        return image.crop((left, top, left + resolution, top + resolution))
    return image.resize((resolution, resolution), PIL.Image.BICUBIC)


def images_to_tensor(
    images: Sequence[PIL.Image.Image],
    resolution: int | None = None,
    channels: int | None = None,
    center_crop: bool = False,
    source: str | None = None,
) -> torch.Tensor:
    """Stack PIL images into a float32 tensor ``(N, C, H, W)`` in ``[0, 1]``.

    Args:
        images: the images.
        resolution (`int`, *optional*): resize to this square size; without it every image must
            already have the same size.
        channels (`int`, *optional*): 1 or 3; defaults to the channels of the first image.
        center_crop (`bool`): crop instead of squashing when resizing non-square images.
        source (`str`, *optional*): where the images come from, named in errors.

    Raises:
        `ValueError`: on an empty list, or on mixed sizes when no ``resolution`` is given.
    """
    if len(images) == 0:
        raise ValueError("No images to convert: the image list is empty.")
    channels = channels or image_channels(images[0])
    if resolution is None:
        sizes = sorted({image.size for image in images})
        if len(sizes) > 1:
            raise ValueError(
                f"Images{f' of {source!r}' if source else ''} have mixed sizes {sizes[:5]}; pass a resolution "
                f"(e.g. --resolution {min(sizes)[0]}) to resize them."
            )
    arrays = [np.asarray(preprocess_image(image, resolution, channels, center_crop), dtype=np.float32) for image in images]
    batch = torch.from_numpy(np.stack(arrays)) / 255.0
    return batch.unsqueeze(1) if channels == 1 else batch.permute(0, 3, 1, 2).contiguous()


def tensor_to_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """Turn a ``(N, C, H, W)`` tensor in ``[0, 1]`` into PIL images (mode L for one channel, RGB for three)."""
    array = (images.detach().clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    if array.shape[-1] == 1:
        return [PIL.Image.fromarray(a[..., 0], mode="L") for a in array]
    return [PIL.Image.fromarray(a, mode="RGB") for a in array]


def load_images(dataset: Dataset, column: str | None = None, indices: Iterable[int] | None = None) -> list[PIL.Image.Image]:
    """Read the images of a data set (optionally only ``indices``) as PIL images."""
    column = find_image_column(dataset, column)
    subset = dataset if indices is None else dataset.select(list(indices))
    return list(subset[column])
