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

import json
import os
from pathlib import Path

from datasets import Features, Image, Value

SETTINGS_FILE = "generation.json"
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
    """The raw ``generation.json`` payload of a folder, or ``{}`` for any other source."""
    settings_file = Path(path) / SETTINGS_FILE
    return json.loads(settings_file.read_text()) if settings_file.is_file() else {}


def shard_path(output_dir: str | os.PathLike, shard: int) -> Path:
    """Where shard ``shard`` of a run lives."""
    return Path(output_dir) / SHARDS_DIR / f"shard-{shard:05d}.parquet"


def shard_files(path: str | os.PathLike) -> list[Path]:
    """The finished shards of a generation folder, in order (empty for any other folder)."""
    return sorted((Path(path) / SHARDS_DIR).glob("*.parquet"))
