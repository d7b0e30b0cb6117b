"""Resumable, distributable image generation: the engine behind ``side synthesize`` and ``side extract``.

A run of N images is cut into shards of ``batch_size`` images. Image ``i`` has its own seed (derived
from the run seed and ``i``), its own `torch.Generator` and — for guided methods — its own target
drawn from that seed, so every image can be regenerated alone and the result does not depend on how
the shards are spread over processes. Finished shards are written atomically as parquet files under
``DIR/shards/``; a killed run started again with the same settings skips them. Under
``accelerate launch`` process ``p`` of ``P`` takes shards ``p, p + P, ...``: the union is the
one-process run, batch for batch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features, Image, Value
from diffusers.utils import logging
from tqdm.auto import tqdm

from .atomic_io import atomic_path, write_json_atomic
from .data import SHARDS_DIR, load_image_dataset
from .pipeline_side import SIDEPipeline

logger = logging.get_logger(__name__)

SETTINGS_FILE = "generation.json"
METHODS = ("synthetic", "uncond", "cond", "side")
GUIDED_METHODS = ("cond", "side")
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
    extra: dict = field(default_factory=dict)

    def validate(self, num_processes: int = 1) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {METHODS}.")
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
        if self.method not in GUIDED_METHODS and self.guidance_scale != 0:
            raise ValueError(
                f"method={self.method!r} samples without guidance but guidance_scale={self.guidance_scale}; "
                "use --method side or cond for guided sampling, or drop --guidance-scale."
            )

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_images / self.batch_size)


def image_seed(run_seed: int, index: int) -> int:
    """The seed of image `index`: a 63-bit hash of (run seed, index) by numpy's SeedSequence."""
    state = np.random.SeedSequence([run_seed, index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def image_target(seed: int, num_classes: int) -> int:
    """The surrogate condition of an image, drawn uniformly from its own seed (independent of its noise)."""
    return int(np.random.default_rng(seed).integers(num_classes))


def shard_path(output_dir: Path, shard: int) -> Path:
    return output_dir / SHARDS_DIR / f"shard-{shard:05d}.parquet"


def prepare_output_dir(output_dir: Path, settings: GenerationSettings) -> None:
    """Create ``output_dir`` for `settings`, or check that it holds the same run (to resume it)."""
    settings_file = output_dir / SETTINGS_FILE
    if settings_file.exists():
        recorded = json.loads(settings_file.read_text())
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
    write_json_atomic(settings_file, asdict(settings))


def generate_shard(pipe: SIDEPipeline, settings: GenerationSettings, shard: int) -> Dataset:
    """Generate the images of one shard (every image from its own seed)."""
    indices = range(shard * settings.batch_size, min((shard + 1) * settings.batch_size, settings.num_images))
    seeds = [image_seed(settings.seed, i) for i in indices]
    device = pipe._execution_device
    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
    guided = settings.method in GUIDED_METHODS
    targets = [image_target(seed, pipe.classifier.config.num_classes) for seed in seeds] if guided else None
    images = pipe(
        batch_size=len(seeds),
        target=targets,
        guidance_scale=settings.guidance_scale if guided else 0.0,
        num_inference_steps=settings.num_inference_steps,
        generator=generators,
        output_type="pil",
    ).images
    records = {
        "image": images,
        "index": list(indices),
        "seed": seeds,
        "method": [settings.method] * len(seeds),
        "target": targets or [-1] * len(seeds),
        "guidance_scale": [settings.guidance_scale if guided else 0.0] * len(seeds),
    }
    return Dataset.from_dict(records, features=RECORD_FEATURES)


def generate(pipe: SIDEPipeline, output_dir: str | os.PathLike, settings: GenerationSettings, accelerator=None) -> Dataset:
    """
    Generate `settings.num_images` images into ``output_dir``, resuming a previous run of the same settings.

    Args:
        pipe ([`SIDEPipeline`]): the pipeline to sample (with the classifier the method needs).
        output_dir (`str` or `os.PathLike`): where ``generation.json`` and ``shards/*.parquet`` go.
        settings ([`GenerationSettings`]): what to generate.
        accelerator (`accelerate.Accelerator`, *optional*): splits the shards over its processes.

    Returns:
        `datasets.Dataset`: all images of the run (columns image, index, seed, method, target, guidance_scale).

    Example:

    ```py
    >>> from diffusers_side import SIDEPipeline
    >>> from diffusers_side.generation import GenerationSettings, generate
    >>> pipe = SIDEPipeline.from_pretrained("path/to/pipeline")
    >>> images = generate(pipe, "synthetic", GenerationSettings(pipeline="path/to/pipeline", method="synthetic", num_images=256))
    ```
    """
    output_dir = Path(output_dir)
    process_index = accelerator.process_index if accelerator else 0
    num_processes = accelerator.num_processes if accelerator else 1
    settings.validate(num_processes)
    check_pipeline_for_method(pipe, settings.method)
    if process_index == 0:
        prepare_output_dir(output_dir, settings)
    if accelerator:
        accelerator.wait_for_everyone()
    if process_index != 0:
        prepare_output_dir(output_dir, settings)  # finds the main process's settings and checks they match

    own_shards = range(process_index, settings.num_shards, num_processes)
    todo = [shard for shard in own_shards if not shard_path(output_dir, shard).exists()]
    if len(todo) < len(own_shards):
        logger.info(f"Resuming: {len(own_shards) - len(todo)} of {len(own_shards)} shards already done in {output_dir}.")
    pipe.set_progress_bar_config(disable=True)
    with tqdm(total=len(todo), desc=f"{settings.method} shards", unit="shard", disable=process_index != 0) as bar:
        for shard in todo:
            write_shard_atomic(generate_shard(pipe, settings, shard), shard_path(output_dir, shard))
            bar.update(1)
    if accelerator:
        accelerator.wait_for_everyone()
    missing = [s for s in range(settings.num_shards) if not shard_path(output_dir, s).exists()]
    if missing:
        raise RuntimeError(f"Shards {missing[:10]} of {output_dir} are missing after generation.")
    return load_image_dataset(output_dir)


def write_shard_atomic(shard: Dataset, path: Path) -> None:
    with atomic_path(path) as tmp:
        shard.to_parquet(str(tmp))


def check_pipeline_for_method(pipe: SIDEPipeline, method: str) -> None:
    """SIDE needs a time-dependent classifier, Carlini Cond a time-independent one."""
    if method not in GUIDED_METHODS:
        return
    if pipe.classifier is None:
        raise ValueError(f"method={method!r} needs a classifier but the pipeline has none; pass --classifier PATH.")
    time_dependent = pipe.classifier.config.time_dependent
    if method == "cond" and time_dependent:
        raise ValueError(
            "method='cond' (Carlini Cond) needs a time-independent classifier, but this one is time-dependent; "
            "train one with `training/train_classifier.py --time_independent` and pass it with --classifier."
        )
    if method == "side" and not time_dependent:
        raise ValueError("method='side' needs a time-dependent classifier, but this one is time-independent.")
