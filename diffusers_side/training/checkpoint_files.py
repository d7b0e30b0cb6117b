"""Why a checkpoint cannot be resumed, naming the file: the one-line error of a truncated or replaced checkpoint."""

from __future__ import annotations

from pathlib import Path


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
