"""Canaries for a canary audit of text-to-image fine-tuning (Extended SIDE, paper App. F).

Extended SIDE pairs unique, non-semantic trigger strings with target images in a fine-tuning set; the fine-tuned
model then reproduces the images when prompted with their triggers. A model owner uses the same mechanism as a
*canary audit* of their fine-tuning pipeline: insert N canaries whose triggers only they know, fine-tune as usual,
then query each trigger and count the canaries that come back (`diffusers_side.audits.canary_audit`), against
fresh triggers that were never inserted (the controls).

[`make_canaries`] writes::

    DIR/images/canary-0000.png, ...   the canary images
    DIR/images/metadata.jsonl         {"file_name": "canary-0000.png", "text": "<trigger>"} per canary: an
                                      ``imagefolder`` to mix into the fine-tuning set (datasets' "text" column)
    DIR/canary_key.json               the private key: triggers, canary ids, alphabet, length, seed (mode 0600;
                                      `side push` refuses any folder holding one)

Triggers are ``trigger_length`` characters drawn uniformly from ``alphabet`` (default: the 20 lowercase consonants,
so no trigger is a word; 20^8 = 2.6e10 strings at the default length 8) with a seeded generator, all distinct.
Canary images are the user's (``images``, the first N of the folder, resized) or drawn: each one a random grid of
3-8 x 3-8 cells of uniformly random colours, upscaled without interpolation, so that no natural image is close to
it and two canaries differ in most pixels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import PIL.Image
from diffusers.utils import logging

from ..storage.outputs import CANARIES, CANARY_KEY_FILE, check_output_folder, write_manifest
from ..utils.atomic_io import atomic_path, write_json_atomic, write_text_atomic

logger = logging.get_logger(__name__)

KEY_FILE = CANARY_KEY_FILE
KEY_FORMAT = "side-canary-key"
IMAGES_DIR = "images"
METADATA_FILE = "metadata.jsonl"
DEFAULT_ALPHABET = "bcdfghjklmnpqrstvwxz"
DEFAULT_TRIGGER_LENGTH = 8
MAKE_TAG, CONTROL_TAG = 1, 2  # seed-sequence tags: canary triggers/images vs control triggers never share draws


def _check_trigger_space(num: int, alphabet: str, trigger_length: int, what: str) -> None:
    if not isinstance(alphabet, str) or len(set(alphabet)) != len(alphabet) or len(alphabet) < 2 or any(c.isspace() for c in alphabet):
        raise ValueError(f"alphabet={alphabet!r} must hold at least 2 distinct non-space characters, e.g. {DEFAULT_ALPHABET!r}.")
    if not isinstance(trigger_length, int) or trigger_length < 4:
        raise ValueError(f"--trigger-length {trigger_length!r} must be an integer >= 4 so that triggers are unique and hard to guess.")
    space = len(alphabet) ** trigger_length
    if num > space // 1000:
        raise ValueError(
            f"{num} {what} from {space} possible triggers ({len(alphabet)} characters, length {trigger_length}) risks "
            "collisions with guesses; pass a larger --trigger-length."
        )


def draw_triggers(num: int, alphabet: str, trigger_length: int, seed: int, tag: int, exclude: Sequence[str] = ()) -> list[str]:
    """``num`` distinct random strings over ``alphabet``, none in ``exclude``; a function of ``(seed, tag)``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, tag]))
    chosen, excluded = [], set(exclude)
    while len(chosen) < num:
        trigger = "".join(rng.choice(list(alphabet), size=trigger_length))
        if trigger not in excluded:
            chosen.append(trigger)
            excluded.add(trigger)
    return chosen


def draw_pattern(rng: np.random.Generator, resolution: int, channels: int) -> PIL.Image.Image:
    """A random grid of 3-8 x 3-8 cells of random colours, upscaled (nearest) to ``resolution``: an unnatural canary."""
    rows, cols = rng.integers(3, 9, size=2)
    cells = rng.integers(0, 256, size=(rows, cols, channels), dtype=np.uint8)
    image = PIL.Image.fromarray(cells[..., 0] if channels == 1 else cells, mode="L" if channels == 1 else "RGB")
    return image.resize((resolution, resolution), PIL.Image.NEAREST)


def _user_images(source: str, num: int, resolution: int, channels: int) -> list[PIL.Image.Image]:
    from ..storage.data import find_image_column, load_image_dataset, preprocess_image

    dataset = load_image_dataset(source)
    if len(dataset) < num:
        raise ValueError(f"--images {source} holds {len(dataset)} images but --num-canaries is {num}; pass more images or fewer canaries.")
    column = find_image_column(dataset)
    return [preprocess_image(dataset[i][column], resolution, channels, center_crop=True) for i in range(num)]


def read_key(folder: str | os.PathLike) -> dict:
    """The canary key of a `make_canaries` output (``DIR`` or ``DIR/canary_key.json``), checked.

    Raises:
        `FileNotFoundError`: no key there. `ValueError`: a damaged key, or images missing beside it.
    """
    folder = Path(folder)
    path = folder if folder.name == KEY_FILE else folder / KEY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--canaries {folder} holds no {KEY_FILE}; pass the output folder of `side canary make`.")
    try:
        key = json.loads(path.read_text())
        assert key["format"] == KEY_FORMAT and len(key["triggers"]) == len(key["canary_ids"]) == len(key["file_names"]) >= 1
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(f"{path} is damaged or not a canary key written by `side canary make`; make the canaries again.") from None
    missing = [name for name in key["file_names"] if not (path.parent / IMAGES_DIR / name).is_file()]
    if missing:
        raise ValueError(f"{path.parent / IMAGES_DIR} lacks canary images {missing[:3]}; restore them from your copy of the canaries.")
    return key


def make_canaries(
    output: str | os.PathLike,
    num_canaries: int,
    images: str | None = None,
    trigger_length: int = DEFAULT_TRIGGER_LENGTH,
    alphabet: str = DEFAULT_ALPHABET,
    resolution: int = 64,
    channels: int = 3,
    seed: int = 0,
) -> dict:
    """
    Write ``num_canaries`` canaries (an imagefolder to mix into a fine-tuning set) and their private key.

    Args:
        output (`str` or `os.PathLike`): a new folder (or the same canaries' folder: remaking with the same
            settings rewrites the same files; other settings are refused, since the key would be lost).
        num_canaries (`int`): N.
        images (`str`, *optional*): a folder / data set whose first N images become the canaries (default: drawn patterns).
        trigger_length (`int`), alphabet (`str`): the triggers' length and characters.
        resolution (`int`), channels (`int`): the canary images' size and channels (1 or 3).
        seed (`int`): seeds the triggers and drawn images.

    Returns:
        `dict`: the key (also written to ``output/canary_key.json``).

    Example:

    ```py
    >>> from diffusers_side.audits.canary import make_canaries
    >>> key = make_canaries("canaries", num_canaries=20, seed=0)
    >>> len(key["triggers"]), key["file_names"][0]
    (20, 'canary-0000.png')
    ```
    """
    if not isinstance(num_canaries, int) or num_canaries < 1:
        raise ValueError(f"--num-canaries {num_canaries!r} must be a positive integer.")
    if channels not in (1, 3) or not isinstance(resolution, int) or resolution < 4:
        raise ValueError(f"resolution={resolution!r} must be an integer >= 4 and channels={channels!r} 1 or 3.")
    _check_trigger_space(num_canaries, alphabet, trigger_length, "canaries")
    settings = {"num_canaries": num_canaries, "images": None if images is None else str(images), "trigger_length": trigger_length,
                "alphabet": alphabet, "resolution": resolution, "channels": channels, "seed": seed}
    folder = check_output_folder(output, CANARIES, command="side canary make")
    if (folder / KEY_FILE).is_file() and read_key(folder)["settings"] != settings:
        raise FileExistsError(
            f"--output {output} holds canaries made with other settings; remaking them would lose their key: choose a new --output."
        )
    if images is not None:
        from ..storage.data import check_image_source

        check_image_source(images)
    rng = np.random.default_rng(np.random.SeedSequence([seed, MAKE_TAG]))
    triggers = draw_triggers(num_canaries, alphabet, trigger_length, seed, MAKE_TAG)
    pictures = _user_images(images, num_canaries, resolution, channels) if images else [
        draw_pattern(rng, resolution, channels) for _ in range(num_canaries)
    ]
    names = [f"canary-{i:04d}.png" for i in range(num_canaries)]
    (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for name, picture in zip(names, pictures):
        with atomic_path(folder / IMAGES_DIR / name) as tmp:
            picture.save(tmp, format="PNG")
    metadata = "".join(json.dumps({"file_name": n, "text": t}) + "\n" for n, t in zip(names, triggers))
    write_text_atomic(folder / IMAGES_DIR / METADATA_FILE, metadata)
    key = {"format": KEY_FORMAT, "triggers": triggers, "canary_ids": list(range(num_canaries)), "file_names": names, "settings": settings}
    write_json_atomic(folder / KEY_FILE, key)
    os.chmod(folder / KEY_FILE, 0o600)
    write_manifest(folder, CANARIES, [KEY_FILE, *(f"{IMAGES_DIR}/{n}" for n in [*names, METADATA_FILE])])
    logger.info(f"{num_canaries} canaries in {folder / IMAGES_DIR}; keep {folder / KEY_FILE} private")
    return key


def draw_controls(key: dict, num_controls: int, seed: int) -> list[str]:
    """``num_controls`` fresh triggers of the key's alphabet and length, never inserted (disjoint from the key's)."""
    settings = key["settings"]
    _check_trigger_space(len(key["triggers"]) + num_controls, settings["alphabet"], settings["trigger_length"], "triggers and controls")
    return draw_triggers(num_controls, settings["alphabet"], settings["trigger_length"], seed, CONTROL_TAG, exclude=key["triggers"])
