"""Turn a ``checkpoint-N`` of ``training/train_dpm.py`` into a pipeline folder that samples with a chosen scheduler.

A training run saves its pipeline only at the end; its checkpoints hold the EMA weights (``ema/``) and the
run's settings (``training_state.json``). `export_dpm_checkpoint` rebuilds the training noise schedule from
those settings (`training.dpm.build_noise_scheduler`), converts it to the sampler asked for with
``from_config`` (same betas and abar_t, same prediction type) and saves ``DDPMPipeline(unet, scheduler)``
in safetensors. ``side extract --pipeline FOLDER`` then samples with that scheduler by default.

Example:

```bash
python training/export_checkpoint.py --checkpoint runs/ddpm/checkpoint-4000 --output runs/ddpm-4000 --scheduler dpm-solver
```
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from diffusers import DDPMPipeline, UNet2DModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME, logging
from safetensors.torch import load_file

from ..pipelines.loading import SCHEDULERS
from ..storage.embedded import EMA_CONFIG_KEYS
from ..utils.atomic_io import atomic_directory, write_json_atomic
from .common import EMA_FOLDER, TRAINING_STATE_NAME
from .dpm import SCRIPT, build_noise_scheduler

logger = logging.get_logger(__name__)

EXPORT_RECORD_NAME = "export.json"


def read_checkpoint_state(checkpoint: str | os.PathLike) -> dict:
    """The ``training_state.json`` of a ``train_dpm.py`` checkpoint that holds EMA weights.

    Raises:
        `FileNotFoundError`: ``checkpoint`` is not a checkpoint folder.
        `ValueError`: it belongs to another script, or its run kept no EMA weights.
    """
    checkpoint = Path(checkpoint)
    state_path = checkpoint / TRAINING_STATE_NAME
    if not state_path.is_file():
        raise FileNotFoundError(
            f"--checkpoint {checkpoint} is not a training checkpoint (no {TRAINING_STATE_NAME}); pass a checkpoint-N folder "
            "written by training/train_dpm.py."
        )
    state = json.loads(state_path.read_text())
    script = state["run"].get("script")
    if script != SCRIPT:
        raise ValueError(f"--checkpoint {checkpoint} was written by {script!r}, not {SCRIPT!r}; pass a train_dpm.py checkpoint.")
    if not (checkpoint / EMA_FOLDER / "config.json").is_file():
        raise ValueError(
            f"--checkpoint {checkpoint} holds no EMA weights ({EMA_FOLDER}/ is missing: the run used --no-use_ema); "
            "export the run's final output folder instead."
        )
    return state


def load_ema_unet(folder: Path) -> UNet2DModel:
    """The `UNet2DModel` that `EMAModel.save_pretrained` wrote to ``folder``, without the EMA keys in its config."""
    config = {k: v for k, v in UNet2DModel.load_config(folder).items() if k not in EMA_CONFIG_KEYS}
    unet = UNet2DModel.from_config(config)
    unet.load_state_dict(load_file(str(folder / SAFETENSORS_WEIGHTS_NAME)), strict=True)
    return unet.eval()


def export_dpm_checkpoint(
    checkpoint: str | os.PathLike, output: str | os.PathLike, scheduler: str = "ddpm"
) -> Path:
    """
    Save the EMA weights of a ``train_dpm.py`` checkpoint as a `DDPMPipeline` folder with the scheduler ``scheduler``.

    Args:
        checkpoint: a ``checkpoint-N`` folder of a ``training/train_dpm.py`` run (with EMA weights).
        output: the pipeline folder to write (replaced as a whole, atomically).
        scheduler (`str`): one of `diffusers_side.pipelines.loading.SCHEDULERS` (``ddpm``, ``ddim``, ``dpm-solver``,
            ...), built with ``from_config`` from the run's training `DDPMScheduler`.

    Returns:
        `Path`: ``output``; it also holds ``export.json`` (the checkpoint, its step and the scheduler).

    Raises:
        `ValueError`: an unknown ``scheduler``, or a checkpoint `read_checkpoint_state` refuses.
        `FileNotFoundError`: ``checkpoint`` is not a checkpoint folder.

    Example:

    ```py
    >>> from diffusers_side.training.export import export_dpm_checkpoint
    >>> export_dpm_checkpoint("runs/ddpm/checkpoint-4000", "runs/ddpm-4000", scheduler="dpm-solver")
    ```
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler {scheduler!r} is not supported; choose one of {sorted(SCHEDULERS)}.")
    checkpoint = Path(checkpoint)
    state = read_checkpoint_state(checkpoint)
    training_scheduler = build_noise_scheduler(argparse.Namespace(**state["run"]))
    sampler = SCHEDULERS[scheduler].from_config(training_scheduler.config)
    unet = load_ema_unet(checkpoint / EMA_FOLDER)
    with atomic_directory(output) as staging:
        DDPMPipeline(unet=unet, scheduler=sampler).save_pretrained(staging, safe_serialization=True)
        write_json_atomic(
            staging / EXPORT_RECORD_NAME,
            {"checkpoint": str(checkpoint.resolve()), "global_step": state["global_step"], "scheduler": scheduler,
             "scheduler_class": type(sampler).__name__, "training_scheduler": dict(training_scheduler.config)},
        )
    logger.info(f"Exported {checkpoint} (step {state['global_step']}) with {type(sampler).__name__} to {output}")
    return Path(output)
