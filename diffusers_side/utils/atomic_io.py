"""Atomic file writes: nothing the plugin writes is ever left half-written by a crash.

Every file goes to a temporary name in the same folder and is moved into place with `os.replace`
(atomic on POSIX and Windows) only once it is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import psutil


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    Example:

    ```py
    >>> from diffusers_side.utils.atomic_io import atomic_path
    >>> with atomic_path("grid.png") as tmp:
    ...     image.save(tmp, format="PNG")
    ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, staging_name: str | None = None) -> Iterator[Path]:
    """Yield an empty staging folder next to ``path``; on success it replaces ``path``, on error it is removed.

    The old folder is renamed aside (``.NAME.old-PID``) before the staging folder is renamed into place and deleted
    only then, so a kill at any point leaves the old folder or the new one, whole: a folder left aside by a killed
    run is put back by the next run when ``path`` is missing (see [`remove_stale_staging`]).

    Args:
        path: the folder to (re)write as a whole.
        staging_name: the staging folder's name (default ``.NAME.tmp-PID``); a leftover one is cleared first,
            and by default so are the ``.NAME.tmp-PID`` folders of killed runs (see [`remove_stale_staging`]).

    Example:

    ```py
    >>> from diffusers_side.utils.atomic_io import atomic_directory
    >>> with atomic_directory("labels") as tmp:
    ...     dataset.save_to_disk(str(tmp))
    ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if staging_name is None:
        remove_stale_staging(path)
    staging = path.parent / (staging_name or f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    aside = path.parent / f".{path.name}.old-{os.getpid()}"
    try:
        yield staging
        moved = path.exists()
        if moved:
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
        try:
            os.replace(staging, path)
        except BaseException:
            if moved:
                os.replace(aside, path)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically and return the path."""
    return write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def remove_stale_staging(directory: str | os.PathLike) -> None:
    """Remove the ``.<name>.tmp-<pid>`` staging folders of ``directory`` whose process no longer runs, and put back
    a ``.<name>.old-<pid>`` folder such a process had moved aside (deleted when ``directory`` exists again)."""
    directory = Path(directory)
    for kind in ("tmp", "old"):
        prefix = f".{directory.name}.{kind}-"
        for stale in directory.parent.glob(f"{prefix}*"):
            pid = stale.name[len(prefix):]
            if not (stale.is_dir() and pid.isdigit() and not psutil.pid_exists(int(pid))):
                continue
            if kind == "old" and not directory.exists():
                os.replace(stale, directory)
            else:
                shutil.rmtree(stale, ignore_errors=True)
