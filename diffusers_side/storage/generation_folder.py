"""The generation folder written by ``side synthesize`` / ``side extract``: its one definition.

```
DIR/generation.json          the GenerationSettings of the run
DIR/shards/shard-00000.parquet, ...   RECORD_FEATURES rows (image, index, seed, method, target, guidance_scale)
```

Labelling, evaluation, ``side push`` and the Hub code read a folder through [`read_settings`] and
[`shard_files`]; the engine writes it through `diffusers_side.generation.settings.prepare_output_dir` and
[`shard_path`].
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from datasets import Features, Image, Value

from ..utils.state_files import GENERATION

SETTINGS_FILE = GENERATION.name
DEFAULT_BATCH_SIZE = 64  # the batch size a generation.json without one was written with
SHARDS_DIR = "shards"
RECORD_FEATURES = Features(
    {
        "image": Image(),
        "index": Value("int64"),
        "seed": Value("int64"),
        "method": Value("string"),
        "target": Value("int64"),
        "guidance_scale": Value("float32"),
    }
)
# The value a reader assumes for a record column a set lacks (e.g. an image folder that is not a generation
# folder); ``None`` for ``method`` means "the folder's name".
RECORD_DEFAULTS = {"index": -1, "seed": -1, "method": None, "target": -1, "guidance_scale": float("nan")}


def is_generation_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` was written by ``side synthesize`` / ``side extract`` (it holds ``generation.json``)."""
    return (Path(path) / SETTINGS_FILE).is_file()


def read_settings(path: str | os.PathLike) -> dict:
    """The raw ``generation.json`` payload of a folder (validated), or ``{}`` for any other source.

    Raises:
        `diffusers_side.utils.state_files.StateFileError`: ``generation.json`` is damaged (the message names it).
    """
    settings_file = Path(path) / SETTINGS_FILE
    return GENERATION.read(settings_file) if settings_file.is_file() else {}


def shard_path(output_dir: str | os.PathLike, shard: int) -> Path:
    """Where shard ``shard`` of a run lives."""
    return Path(output_dir) / SHARDS_DIR / f"shard-{shard:05d}.parquet"


def shard_files(path: str | os.PathLike) -> list[Path]:
    """The finished shards of a generation folder, in order of their number (empty for any other folder).

    Numbers are compared as numbers: names are padded to five digits, so past shard 99,999 (a run of 10 million
    images in batches of 64 has 156,250) ``shard-100000`` would sort before ``shard-20000`` as text.
    """

    def number(shard: Path) -> tuple[int, str]:
        digits = shard.stem.rpartition("-")[2]
        return (int(digits), shard.name) if digits.isdigit() else (-1, shard.name)

    return sorted((Path(path) / SHARDS_DIR).glob("*.parquet"), key=number)


def check_complete(path: str | os.PathLike, num_rows: int, indices: list[int] | None) -> None:
    """Refuse a generation folder whose run is unfinished or damaged: a shard missing, rows missing or duplicated.

    Args:
        path: the folder; any other source passes.
        num_rows: the rows read from its shards.
        indices: their ``index`` column (``None`` when absent).

    Raises:
        `ValueError`: naming the folder, N_G found and asked for, the missing shards and how to complete the run.
    """
    settings = read_settings(path)
    if not settings:
        return
    expected = settings["num_images"]
    num_shards = math.ceil(expected / settings.get("batch_size", DEFAULT_BATCH_SIZE))
    if num_rows == expected and (indices is None or sorted(indices) == list(range(expected))):
        return  # every image of the run, once (however its rows are spread over shards)
    present = {p.stem for p in shard_files(path)}
    missing = [s for s in range(num_shards) if shard_path(path, s).stem not in present]
    shown = f"shards {missing[:10]} are missing" if missing else "its rows do not match the run's image indices"
    raise ValueError(
        f"{path} holds {num_rows} of the {expected} images its {SETTINGS_FILE} asks for ({shown}): the run is unfinished "
        f"or damaged, and scoring it would report N_G = {num_rows}. Complete it by running the same `side synthesize` / "
        f"`side extract` command again with --output {path} (it resumes and regenerates missing shards)."
    )
