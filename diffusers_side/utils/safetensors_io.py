"""safetensors in and out with errors that name the file: a full disk or a damaged file is one `OSError` / `ValueError`.

safetensors reports both as its own ``SafetensorError`` (neither an `OSError` nor a `ValueError`), which would reach
the user as a traceback; these wrappers turn it into the error the CLI reports in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from .atomic_io import atomic_path


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """`safetensors.torch.save_file` to ``path`` atomically; a failed write (a full disk) is an `OSError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as error:
            raise OSError(f"Could not write {path} ({error}); is the disk full?") from None
    return path


def load_safetensors(path: str | os.PathLike, keys: tuple[str, ...] = ()) -> dict:
    """`safetensors.torch.load_file`, refusing a truncated or foreign file, or one without ``keys``, by name.

    Raises:
        `ValueError`: naming the file and what is wrong.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is damaged or not a safetensors file ({error}); write it again.") from None
    missing = [key for key in keys if key not in tensors]
    if missing:
        raise ValueError(f"{path} lacks the tensor(s) {missing}; write it again.")
    return tensors
