"""Image files as they come: checked before decoding, and high bit depths scaled instead of clipped.

- [`check_image_files`] opens every image's header only (no pixel is decoded): a decompression bomb (an
  image whose header claims more pixels than Pillow's ``MAX_IMAGE_PIXELS`` allows), a truncated or
  unreadable file, is refused with one `ValueError` naming the set and the row, before any model loads.
- [`to_8bit`] maps 16-bit (``I;16``, ``I;16B``, ``I;16L``, ``I``) and float (``F``) images onto 8-bit
  grayscale by *scaling* their range, where Pillow's ``convert("L")`` clips everything above 255 to white
  (and maps floats in [0, 1] to black). The ranges: ``I;16*`` and ``I`` are 16-bit (0..65535, the form in
  which Pillow reads 16-bit PNG and TIFF files); ``F`` is [0, 1] (the float convention of torchvision and the
  diffusers image processors) when it fits there, else 0..255 (Pillow's own float scale); float values
  outside both, and integers outside 0..65535, are refused rather than guessed.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
import PIL.Image

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
FLOAT_MODE = "F"


def to_8bit(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` itself, or for a 16-bit or float image its 8-bit grayscale (mode ``L``) version, range scaled.

    Raises:
        `ValueError`: pixel values outside the range of the image's mode (see the module docstring).

    Example:

    ```py
    >>> import numpy as np, PIL.Image
    >>> sixteen = PIL.Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))  # mode I;16
    >>> np.asarray(to_8bit(sixteen)).max()
    255
    ```
    """
    if image.mode not in (*SIXTEEN_BIT_MODES, FLOAT_MODE):
        return image
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == FLOAT_MODE:
        if not np.isfinite(values).all() or low < 0 or high > 255:
            raise ValueError(
                f"A float (mode F) image has values in [{low:g}, {high:g}]; float images are read as [0, 1] or 0..255: "
                "rescale it, or save it as an 8- or 16-bit PNG."
            )
        scale = 1.0 if high <= 1 else 255.0
    else:
        if low < 0 or high > 65535:
            raise ValueError(
                f"A {image.mode} image has values in [{low:g}, {high:g}], outside the 16-bit range 0..65535; "
                "save it as an 8- or 16-bit PNG."
            )
        scale = 65535.0
    return PIL.Image.fromarray(np.round(values / scale * 255).astype(np.uint8), mode="L")


def check_image_files(dataset, column: str, source: str) -> set[tuple[int, int]]:
    """Open every image header of ``dataset[column]`` without decoding pixels; return the sizes found.

    Args:
        dataset (`datasets.Dataset`): the set; its column should be a `datasets.Image` feature (others pass unchecked).
        column (`str`): the image column.
        source (`str`): how the user named the set, for messages.

    Raises:
        `ValueError`: a decompression bomb or an unreadable image, naming ``source``, the row and the file.
    """
    from datasets import Image

    if not isinstance(dataset.features.get(column), Image):
        return set()
    sizes = set()
    undecoded = dataset.cast_column(column, Image(decode=False))
    for row, item in enumerate(undecoded[column]):
        if item is None:
            raise ValueError(f"Image {row} of {source!r} is missing (an empty cell); remove the row or supply the image.")
        name = item.get("path") or f"row {row}"
        try:
            with PIL.Image.open(BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as image:
                sizes.add(image.size)
        except PIL.Image.DecompressionBombError as error:
            raise ValueError(
                f"Image {row} of {source!r} ({name}) claims more pixels than Pillow allows ({error}); it may be a "
                "decompression bomb: remove it from the set."
            ) from None
        except (OSError, SyntaxError, ValueError) as error:  # PIL.UnidentifiedImageError is an OSError
            raise ValueError(f"Image {row} of {source!r} ({name}) cannot be read ({error}); remove or replace it.") from None
    return sizes
