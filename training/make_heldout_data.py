"""Make the held-out target's training set: small RGB patches of scikit-learn's two bundled sample photos.

The held-out model (``docs/heldout_model.md``) is a further memorizing DDPM that nothing in the
project is tuned on; this command makes its data deterministically, from files that ship with
scikit-learn (`sklearn.datasets.load_sample_images`: ``china.jpg`` and ``flower.jpg``, 427 x 640 RGB),
so no download is needed:

1. each photo is shrunk by ``--scale`` with PIL's box filter (area average);
2. it is cut into non-overlapping ``--resolution`` x ``--resolution`` tiles on a grid from its top-left corner;
3. tiles whose contrast (the standard deviation of [0, 1] pixel values over the tile, per channel, averaged
   over R, G and B) is below ``--min-contrast`` are dropped (flat sky and background, near-duplicates of
   each other);
4. ``--num-images`` of the remaining tiles are drawn with ``numpy.random.default_rng(--seed)``, in grid order.

The output is an ``imagefolder``: ``00000.png``, ... and ``metadata.jsonl`` (photo, left, top of each
tile in the shrunk photo), usable as ``--train_data_dir`` of ``training/train_dpm.py`` and as the
``--reference`` of ``side evaluate`` / ``side demo``. The same arguments give the same bytes.

Example:

```bash
python training/make_heldout_data.py --output /work/outputs/heldout/data
```
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import PIL.Image

NUM_IMAGES = 250
RESOLUTION = 16
SCALE = 2
MIN_CONTRAST = 0.04
SEED = 0
METADATA_FILE = "metadata.jsonl"


@dataclass(frozen=True)
class Patch:
    """One tile: the photo it comes from, its top-left corner in the shrunk photo, and its pixels."""

    photo: str
    left: int
    top: int
    image: PIL.Image.Image


def check_settings(num_images: int, resolution: int, scale: int, min_contrast: float) -> None:
    """Refuse settings that cannot make a data set, before any photo is read.

    Raises:
        `ValueError`: naming the value and what to pass instead.
    """
    if num_images < 1:
        raise ValueError(f"--num-images must be a positive integer, got {num_images}.")
    if resolution < 16:
        raise ValueError(f"--resolution must be at least 16 (the held-out target is at least 16x16), got {resolution}.")
    if scale < 1:
        raise ValueError(f"--scale must be a positive integer (1 keeps the photos' size), got {scale}.")
    if not 0.0 <= min_contrast < 0.5:
        raise ValueError(f"--min-contrast must be in [0, 0.5) (a standard deviation of [0, 1] pixels), got {min_contrast}.")


def candidate_patches(resolution: int = RESOLUTION, scale: int = SCALE, min_contrast: float = MIN_CONTRAST) -> list[Patch]:
    """Every grid tile of the shrunk sample photos whose contrast reaches ``min_contrast``, photo by photo in grid order."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    patches = []
    for file_name, pixels in sorted(zip(photos.filenames, photos.images), key=lambda pair: Path(pair[0]).name):
        photo = PIL.Image.fromarray(pixels, mode="RGB")
        small = photo.resize((photo.width // scale, photo.height // scale), PIL.Image.BOX)
        array = np.asarray(small)
        for top in range(0, small.height - resolution + 1, resolution):
            for left in range(0, small.width - resolution + 1, resolution):
                tile = array[top : top + resolution, left : left + resolution]
                if (tile / 255.0).std(axis=(0, 1)).mean() >= min_contrast:
                    patches.append(Patch(Path(file_name).stem, left, top, PIL.Image.fromarray(tile, mode="RGB")))
    return patches


def draw_patches(
    num_images: int = NUM_IMAGES,
    resolution: int = RESOLUTION,
    scale: int = SCALE,
    min_contrast: float = MIN_CONTRAST,
    seed: int = SEED,
) -> list[Patch]:
    """``num_images`` of the `candidate_patches`, drawn without replacement with ``numpy.random.default_rng(seed)``.

    Raises:
        `ValueError`: bad settings (`check_settings`), or more images asked for than tiles pass the contrast filter.
    """
    check_settings(num_images, resolution, scale, min_contrast)
    candidates = candidate_patches(resolution, scale, min_contrast)
    if num_images > len(candidates):
        raise ValueError(
            f"--num-images {num_images} is more than the {len(candidates)} tiles of {resolution}x{resolution} pixels "
            f"(photos shrunk by --scale {scale}, contrast >= --min-contrast {min_contrast}); pass --num-images "
            f"{len(candidates)} or less, a smaller --scale or a lower --min-contrast."
        )
    chosen = np.random.default_rng(seed).choice(len(candidates), size=num_images, replace=False)
    return [candidates[i] for i in sorted(int(i) for i in chosen)]


def write_image_folder(patches: Sequence[Patch], output: str | Path) -> Path:
    """Write ``patches`` as an ``imagefolder`` (PNG files and ``metadata.jsonl``), atomically; return the folder."""
    from diffusers_side.utils.atomic_io import atomic_directory

    rows = []
    with atomic_directory(output) as staging:
        for index, patch in enumerate(patches):
            file_name = f"{index:05d}.png"
            patch.image.save(staging / file_name, format="PNG")
            rows.append({"file_name": file_name, "photo": patch.photo, "left": patch.left, "top": patch.top})
        (staging / METADATA_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return Path(output)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python training/make_heldout_data.py",
        description="Write the held-out target's training set: RGB tiles of scikit-learn's sample photos, as an imagefolder.",
    )
    parser.add_argument("--output", required=True, help="a new folder for the images (refused if it exists and is not empty)")
    parser.add_argument("--num-images", type=int, default=NUM_IMAGES, help=f"tiles to keep (default: {NUM_IMAGES})")
    parser.add_argument("--resolution", type=int, default=RESOLUTION, help=f"tile size in pixels, at least 16 (default: {RESOLUTION})")
    parser.add_argument("--scale", type=int, default=SCALE, help=f"shrink the photos by this factor first (default: {SCALE})")
    parser.add_argument(
        "--min-contrast",
        type=float,
        default=MIN_CONTRAST,
        help=f"drop tiles whose per-channel pixel standard deviation on [0, 1], averaged over R, G, B, is below this "
        f"(default: {MIN_CONTRAST})",
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the draw (default: {SEED})")
    return parser, parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    parser, args = parse_args(argv)
    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        parser.error(f"--output {output} already exists and is not an empty folder; pass a new folder or remove it.")
    try:
        patches = draw_patches(args.num_images, args.resolution, args.scale, args.min_contrast, args.seed)
    except ValueError as error:
        parser.error(str(error))
    write_image_folder(patches, output)
    print(f"Wrote {len(patches)} RGB images of {args.resolution}x{args.resolution} pixels to {output}", file=sys.stderr)
    return output


if __name__ == "__main__":
    main()
