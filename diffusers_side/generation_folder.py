"""The generation folder written by ``side synthesize`` / ``side extract``: its one definition.

```
DIR/generation.json          the GenerationSettings of the run
DIR/shards/shard-00000.parquet, ...   RECORD_FEATURES rows (image, index, seed, method, target, guidance_scale)
```

Labelling, evaluation, ``side push`` and the Hub code read a folder through [`read_settings`] and
[`shard_files`]; the engine writes it through [`prepare_output_dir`] and [`shard_path`].
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from datasets import Features, Image, Value

from .atomic_io import write_json_atomic
from .methods import METHODS, get_method

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


@dataclass
class GenerationSettings:
    """Everything that determines the images of a run (written to ``generation.json``)."""

    pipeline: str
    method: str
    num_images: int
    batch_size: int = 64
    seed: int = 0
    num_inference_steps: int = 50
    guidance_scale: float = 0.0
    scheduler: str | None = None
    classifier: str | None = None

    @classmethod
    def from_dict(cls, payload: dict) -> "GenerationSettings":
        """Settings from a ``generation.json`` payload; the empty ``extra`` of older folders is dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in known})

    def validate(self, num_processes: int = 1) -> None:
        """Raise `ValueError` naming the setting and the fix, before any image is generated."""
        method = get_method(self.method)
        if self.num_images < 1 or self.batch_size < 1 or self.num_inference_steps < 1:
            raise ValueError(
                f"num_images={self.num_images}, batch_size={self.batch_size} and num_inference_steps="
                f"{self.num_inference_steps} must all be positive."
            )
        if self.num_images < num_processes:
            raise ValueError(
                f"num_images={self.num_images} is smaller than the {num_processes} processes launched; "
                "generate at least one image per process or launch fewer processes."
            )
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale={self.guidance_scale} is negative; use 0 or a positive scale.")
        if not method.needs_classifier and self.guidance_scale != 0:
            guided = [name for name, other in METHODS.items() if other.needs_classifier]
            raise ValueError(
                f"method={self.method!r} samples without guidance but guidance_scale={self.guidance_scale}; "
                f"use --method {' or '.join(guided)} for guided sampling, or drop --guidance-scale."
            )

    @property
    def num_shards(self) -> int:
        """Shards of ``batch_size`` images in the run."""
        return math.ceil(self.num_images / self.batch_size)


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


def prepare_output_dir(output_dir: str | os.PathLike, settings: GenerationSettings) -> None:
    """Create ``output_dir`` for `settings`, or check that it holds the same run (to resume it)."""
    output_dir = Path(output_dir)
    if is_generation_folder(output_dir):
        recorded = asdict(GenerationSettings.from_dict(read_settings(output_dir)))
        if recorded != asdict(settings):
            changed = sorted(k for k in set(recorded) | set(asdict(settings)) if recorded.get(k) != asdict(settings).get(k))
            raise FileExistsError(
                f"{output_dir} holds a different run (settings differ in {changed}); resume it with the same "
                "arguments, or choose another --output."
            )
        return
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty and holds no generation run; choose another --output.")
    (output_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / SETTINGS_FILE, asdict(settings))
