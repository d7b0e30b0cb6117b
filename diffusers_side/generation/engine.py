"""Resumable, distributable image generation: the engine behind ``side synthesize`` and ``side extract``.

A run of N images is cut into shards of ``batch_size`` images. Image ``i`` has its own seed (derived
from the run seed, ``i`` and the run's seed stream, synthesis or extraction: `diffusers_side.generation.seeds`), its own `torch.Generator` and — for guided methods — its own target
drawn from that seed, so every image can be regenerated alone and the result does not depend on how
the shards are spread over processes. Finished shards are written atomically as parquet files under
``DIR/shards/``; a killed run started again with the same settings skips them. Under
``accelerate launch`` process ``p`` of ``P`` takes shards ``p, p + P, ...``: the union is the
one-process run, batch for batch.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from datasets import Dataset
from diffusers.utils import logging
from tqdm.auto import tqdm

from ..guidance.targets import image_target
from ..methods.base import ShardRequest, Steering
from ..methods.registry import get_method
from ..pipelines.loading import weights_fingerprint
from ..pipelines.pipeline_side import SIDEPipeline
from ..storage.data import load_image_dataset
from ..storage.generation_folder import RECORD_FEATURES, shard_path
from ..utils.atomic_io import atomic_path
from .fingerprints import config_fingerprint, steering_fingerprint
from .preflight import TargetFacts, check_generation
from .seeds import image_seed
from .settings import GenerationSettings, prepare_output_dir

logger = logging.get_logger(__name__)

__all__ = ["GenerationSettings", "RECORD_FEATURES", "generate", "generate_shard", "image_seed", "image_target"]


def generate_shard(pipe: SIDEPipeline, settings: GenerationSettings, shard: int, steering: Steering | None = None) -> Dataset:
    """Generate the images of one shard (every image from its own seed); ``steering`` from the method's `steering`."""
    indices = range(shard * settings.batch_size, min((shard + 1) * settings.batch_size, settings.num_images))
    seeds = [image_seed(settings.seed, i, settings.seed_stream) for i in indices]
    device = pipe._execution_device
    method = get_method(settings.method)
    if steering is None:
        steering = method.steering(pipe, settings)
    targets = [steering.targets.draw(seed) for seed in seeds] if steering is not None else None
    guidance_scale = method.resolve_guidance_scale(settings.guidance_scale)
    request = ShardRequest(
        seeds=seeds,
        generators=[torch.Generator(device).manual_seed(seed) for seed in seeds],
        targets=targets,
        guidance_scale=guidance_scale,
        num_inference_steps=settings.num_inference_steps,
        guide=steering.guide if steering is not None else None,
        restart_strength=settings.restart_strength,
    )
    records = {
        "image": method.sample(pipe, request),
        "index": list(indices),
        "seed": seeds,
        "method": [settings.method] * len(seeds),
        "target": targets or [-1] * len(seeds),
        "guidance_scale": [guidance_scale] * len(seeds),
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
    >>> from diffusers_side.generation.engine import GenerationSettings, generate
    >>> pipe = SIDEPipeline.from_pretrained("path/to/pipeline")
    >>> settings = GenerationSettings(pipeline="path/to/pipeline", method="synthetic", num_images=256)
    >>> images = generate(pipe, "synthetic", settings)
    ```
    """
    output_dir = Path(output_dir)
    process_index = accelerator.process_index if accelerator else 0
    num_processes = accelerator.num_processes if accelerator else 1
    settings.validate(num_processes)
    method = get_method(settings.method)
    method.check_pipeline(pipe)
    check_inputs(pipe, settings)
    steering = method.steering(pipe, settings)  # loads and checks what guides, before the folder is written
    settings = with_fingerprints(pipe, settings, steering)
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
            write_shard_atomic(generate_shard(pipe, settings, shard, steering), shard_path(output_dir, shard))
            bar.update(1)
    if accelerator:
        accelerator.wait_for_everyone()
    missing = [s for s in range(settings.num_shards) if not shard_path(output_dir, s).exists()]
    if missing:
        raise RuntimeError(f"Shards {missing[:10]} of {output_dir} are missing after generation.")
    return load_image_dataset(output_dir)


def check_inputs(pipe: SIDEPipeline, settings: GenerationSettings) -> None:
    """The checks of `diffusers_side.generation.preflight` on the loaded model, before anything is written."""
    check_generation(settings, TargetFacts.from_pipeline(pipe, settings.pipeline))


def with_fingerprints(pipe: SIDEPipeline, settings: GenerationSettings, steering: Steering | None = None) -> GenerationSettings:
    """`settings` with the fingerprints of what will sample: the weights of the modules the method names
    (`fingerprinted`: the UNet, and the classifier of classifier guidance), every sampling component's config, and
    what steers the run (`steering`: targets and an exemplar set)."""
    modules = get_method(settings.method).fingerprinted(pipe)
    weights = {field: None if module is None else weights_fingerprint(module) for field, module in modules.items()}
    include_classifier = modules.get("classifier_fingerprint") is not None
    return replace(
        settings, **weights, config_fingerprint=config_fingerprint(pipe, include_classifier),
        exemplars_fingerprint=steering_fingerprint(steering),
    )


def write_shard_atomic(shard: Dataset, path: Path) -> None:
    """Write one shard's rows to ``path`` as parquet, atomically."""
    with atomic_path(path) as tmp:
        shard.to_parquet(str(tmp))
