"""A training run's checkpoints: their names, atomic saving, finding the one to resume, loading it (refusing one of
another run), and the one-line error of a truncated or replaced checkpoint, naming the file."""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from diffusers.utils import logging

from ..utils.atomic_io import write_json_atomic
from ..utils.state_files import RUN_CONFIG, TRAINING_STATE

logger = logging.get_logger(__name__)

RUN_CONFIG_NAME = RUN_CONFIG.name
TRAINING_STATE_NAME = TRAINING_STATE.name
TRAIN_LOG_NAME = "train_log.json"
CHECKPOINT_PREFIX = "checkpoint-"
EMA_FOLDER = "ema"


def damaged_checkpoint_message(checkpoint: Path, error: Exception) -> str:
    """Why ``checkpoint`` cannot be loaded, naming the damaged file: each file is probed as accelerate reads it
    (safetensors, or torch's ``weights_only`` unpickler, which refuses any pickled object instead of running it)."""
    from accelerate.utils import load as accelerate_load
    from safetensors.torch import load_file

    culprit = None
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".safetensors":
                load_file(str(path))
            elif path.suffix in (".bin", ".pkl", ".pt", ".pth"):
                accelerate_load(str(path), map_location="cpu")
        except Exception as probe:  # noqa: BLE001
            culprit = f"{path} is damaged or not what accelerate saved ({type(probe).__name__}: {probe})"
            break
    reason = culprit or f"{type(error).__name__}: {error}"
    return (
        f"Checkpoint {checkpoint} cannot be resumed: {reason}. Its pickled objects, if any, were not run. Delete "
        f"{checkpoint} to resume from an earlier checkpoint, or start over with --overwrite_output_dir."
    )


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """Every folder `save_checkpoint` writes: ``checkpoint-N`` (complete or not) and its staging ``.checkpoint-N.tmp``."""
    pattern = re.compile(rf"^\.?{CHECKPOINT_PREFIX}\d+(\.tmp)?$")
    return sorted(p for p in Path(output_dir).iterdir() if p.is_dir() and pattern.match(p.name))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    pattern = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
    candidates = Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*")
    found = [(int(m.group(1)), p) for p in candidates if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found) if (p / TRAINING_STATE_NAME).is_file()]


def save_checkpoint(
    accelerator: Accelerator, args: argparse.Namespace, state: dict[str, Any], ema: EMAModel | None
) -> Path:
    """Save a resumable state to ``output_dir/checkpoint-N`` atomically and prune old checkpoints."""
    output_dir = Path(args.output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{state['global_step']}"
    tmp = output_dir / f".{final.name}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if ema is not None:
            ema.save_pretrained(str(tmp / EMA_FOLDER))
        write_json_atomic(tmp / TRAINING_STATE_NAME, state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if args.checkpoints_total_limit is not None:
            for old in list_checkpoints(output_dir)[: -args.checkpoints_total_limit]:
                shutil.rmtree(old)
        logger.info(f"Saved checkpoint {final}")
    accelerator.wait_for_everyone()
    return final


def find_resume_checkpoint(args: argparse.Namespace) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` designates (``None`` when starting fresh)."""
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(args.output_dir)
        if not checkpoints:
            logger.info(f"No checkpoint in {args.output_dir}; starting a new run.")
        return checkpoints[-1] if checkpoints else None
    return Path(args.resume_from_checkpoint)


def load_checkpoint(
    accelerator: Accelerator, checkpoint: Path, identity: dict[str, Any], ema: EMAModel | None, model_cls: type
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and EMA from ``checkpoint``; return its training state.

    Raises:
        `ValueError`: the checkpoint belongs to a run with different settings.
    """
    state = TRAINING_STATE.read(checkpoint / TRAINING_STATE_NAME)
    differences = recorded_differences(state["run"], identity)
    if differences:
        raise ValueError(f"Checkpoint {checkpoint} belongs to a different run ({'; '.join(differences)}).")
    try:
        _probe_random_states(checkpoint)
        accelerator.load_state(str(checkpoint))
        if ema is not None:
            saved = EMAModel.from_pretrained(str(checkpoint / EMA_FOLDER), model_cls=model_cls)
            ema.load_state_dict(saved.state_dict())
            ema.to(accelerator.device)
    except Exception as error:  # noqa: BLE001 - torch, safetensors and accelerate each raise their own kind
        raise ValueError(damaged_checkpoint_message(checkpoint, error)) from None
    logger.info(f"Resumed from {checkpoint} at step {state['global_step']}")
    return state


def _probe_random_states(checkpoint: Path) -> None:
    """Read the RNG states the way accelerate does (``weights_only``: a pickled object is refused, never run), raising
    if one cannot be read: accelerate itself skips an unreadable one with an info line, which would resume a replaced
    or damaged checkpoint without a word."""
    from accelerate.utils import load as accelerate_load

    for path in sorted(checkpoint.glob("random_states_*.pkl")):
        accelerate_load(str(path), map_location="cpu")


def recorded_differences(recorded: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(identity))
    return [f"{k}: {recorded.get(k)!r} -> {identity.get(k)!r}" for k in keys if recorded.get(k) != identity.get(k)]
