"""What a command may write, overwrite, delete or upload: the one place that decides.

Every folder a ``side`` command writes is one *kind* of artefact (`KINDS`), recognised by the file that
marks it (``generation.json``, ``surrogate_labels.json``, ``report.json``, ...) or by the manifest
``.side_outputs.json`` in which a command lists the files it wrote. The rules:

- [`check_output_folder`]: a command writes into a new or empty folder, or into a folder of its own kind
  (to resume or refresh it); a folder of another kind (``side evaluate --output`` into a pipeline or a label
  output) or holding files no command wrote is refused, before any model loads. An output that cannot be
  created or written (a parent that is a file, a read-only file system) is refused then too, and a symbolic
  link is followed to the folder it names.
- [`foreign_entries`]: a command that replaces its folder as a whole (``side label``) deletes only the files
  its manifest lists, exactly by name, and refuses to run while anything else is there.
- [`training_data_files`]: what holds training images or their matches (``matches.parquet``, any table with its
  columns whatever its name or format, and the figures of ``side evaluate``); ``side push`` refuses to upload it
  unless asked explicitly.
- [`canary_key_files`]: the private keys of ``side canary make``; ``side push`` refuses any folder holding one.

This module imports nothing heavy.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from pathlib import Path
from typing import Iterable

from ..utils.atomic_io import write_json_atomic
from ..utils.state_files import OUTPUTS_MANIFEST, StateFileError

MANIFEST = OUTPUTS_MANIFEST.name
GENERATION, LABELS, EVALUATION, SWEEP, DEMO = "generation", "labels", "evaluation", "sweep", "demo"
TRAINING, PIPELINE, LORA = "training", "pipeline", "lora"
DIVERGENCE, QUERY_ONLY = "divergence", "query-only"
CANARIES, CANARY_AUDIT = "canaries", "canary-audit"
CANDIDATES = "candidates"
MATCHES_FILE = "matches.parquet"
# the columns that make a table a matches table, whatever its file is called: which training image each row copies
MATCHES_COLUMNS = frozenset({"best_match", "score", "band"})
FIGURES_DIR = "figures"
CANARY_KEY_FILE = "canary_key.json"  # the private key of `side canary make`

# kind -> (the file that marks it, what it is). Checked in this order: a folder of several (a demo holds a
# report, a training run a pipeline) is the first kind that matches.
KINDS: dict[str, tuple[str, str]] = {
    DEMO: ("demo_config.json", "a `side demo` output"),
    SWEEP: ("sweep_config.json", "a `side sweep` output"),
    TRAINING: ("run_config.json", "a training run (`side train-classifier` / `side train-lora` / train_dpm.py)"),
    LORA: ("side_lora.json", "LoRA-SIDE adapters"),
    PIPELINE: ("model_index.json", "a diffusers pipeline"),
    GENERATION: ("generation.json", "a generation run (`side synthesize` / `side extract`)"),
    CANDIDATES: ("candidates.json", "a `side candidates` list"),
    LABELS: ("surrogate_labels.json", "a `side label` output"),
    EVALUATION: ("report.json", "a `side evaluate` report"),
    DIVERGENCE: ("divergence.json", "a `side divergence` report"),
    QUERY_ONLY: ("query_only.json", "a `side query-only` search"),
    CANARIES: (CANARY_KEY_FILE, "`side canary make` canaries with their private key"),
}
# The files a `side label` output written before manifests existed holds (besides its arrow shards).
LEGACY_LABEL_FILES = ("dataset_info.json", "state.json", "surrogate_labels.json", "surrogate_labels.safetensors", "contact_sheet.png")
# The names a command that replaces its folder as a whole can ever have written there (top level only): what it may
# delete is its manifest's list *and* these, so a forged or edited manifest cannot make it delete a model's weights,
# a sub-folder or a user's file.
OWN_FILE_PATTERNS: dict[str, tuple[str, ...]] = {
    LABELS: (*LEGACY_LABEL_FILES, "data-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].arrow"),
}


def _may_own(kind: str, name: str) -> bool:
    """Whether the command writing ``kind`` can have written ``name`` (a path relative to its folder): a top-level
    name matching its `OWN_FILE_PATTERNS`. A kind without patterns owns nothing it may delete, and no path with a
    folder in it (``unet/...``, ``../x``, ``/abs``) is ever owned."""
    patterns = OWN_FILE_PATTERNS.get(kind, ())
    return isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", "..") and any(
        fnmatch.fnmatchcase(name, p) for p in patterns)


def folder_kind(folder: str | os.PathLike) -> str | None:
    """The kind of artefact ``folder`` holds (its manifest's, else the first marker of `KINDS` found), or ``None``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    manifest = read_manifest(folder)
    if manifest is not None:
        return manifest["kind"]
    for kind, (marker, _) in KINDS.items():
        if (folder / marker).is_file():
            return kind
    return EVALUATION if (folder / MATCHES_FILE).is_file() else None


def describe(kind: str | None) -> str:
    """What a kind of folder is, for messages."""
    return KINDS[kind][1] if kind in KINDS else f"a {kind!r} output" if kind else "files no `side` command wrote"


def check_output_folder(
    folder: str | os.PathLike, kind: str, flag: str = "--output", accept: Iterable[str] = (), command: str | None = None
) -> Path:
    """Refuse an output folder ``command`` may not write, before any work; return it with symbolic links resolved.

    Args:
        folder: the output folder (absent, empty, or one the command wrote before).
        kind: the kind of folder the command writes (a key of `KINDS`).
        flag: the flag that named the folder, for messages.
        accept: other kinds the command may also write into.
        command: the command, for messages (default: the writer of ``kind``).

    Raises:
        `FileExistsError`: ``folder`` is a file, or holds another kind of artefact or files no command wrote.
        `OSError`: ``folder`` cannot be created or written.
    """
    given = Path(folder)
    folder = given.resolve() if given.is_symlink() else given
    refuse_dangling_link(given, flag)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{flag} {given} is a file; choose a folder.")
    found = folder_kind(folder)
    if found is not None and found != kind and found not in accept:
        writer = command or describe(kind)
        raise FileExistsError(
            f"{flag} {given} holds {describe(found)}; it is not {writer}'s to overwrite: choose another (new or empty) {flag}."
        )
    if found is None and folder.is_dir() and any(folder.iterdir()):
        earlier = f" (not an earlier {command} output)" if command else ""
        raise FileExistsError(f"{flag} {given} is not empty and holds no {describe(kind)[2:]}{earlier}; choose another {flag}.")
    check_writable(folder, flag)
    return folder


def refuse_dangling_link(folder: Path, flag: str) -> None:
    """Refuse a symbolic link whose target does not exist (creating the folder would fail with ``File exists``)."""
    if folder.is_symlink() and not folder.exists():
        raise FileNotFoundError(
            f"{flag} {folder} is a symbolic link to {os.readlink(folder)}, which does not exist; create that folder, or "
            f"pass another {flag}."
        )


def check_writable(folder: Path, flag: str) -> None:
    """Refuse a folder that cannot be created or written (probed with a temporary file, as root is not bound by modes).

    Raises:
        `OSError`: naming the flag, the folder and why.
    """
    refuse_dangling_link(Path(folder), flag)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise NotADirectoryError(f"{flag} {folder} cannot be created: {existing} is a file; choose another {flag}.")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".side-write-probe-"):
            pass
    except OSError as error:
        raise PermissionError(
            f"{flag} {folder} cannot be written ({error.strerror or error}); choose a folder you can write to."
        ) from None


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of ``folder`` (``{"kind", "files"}``), or ``None`` when it has none.

    Raises:
        [`~diffusers_side.utils.state_files.StateFileError`]: the manifest is damaged.
    """
    path = Path(folder) / MANIFEST
    return OUTPUTS_MANIFEST.read(path) if path.is_file() else None


def write_manifest(folder: str | os.PathLike, kind: str, files: Iterable[str]) -> Path:
    """Record (atomically) that the command writing ``kind`` wrote ``files`` (paths relative to ``folder``)."""
    files = sorted({Path(f).as_posix() for f in files} - {MANIFEST})
    return write_json_atomic(Path(folder) / MANIFEST, {"kind": kind, "files": files})


def written_files(folder: str | os.PathLike) -> list[str]:
    """Every regular file under ``folder``, relative and in posix form (for [`write_manifest`])."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def owned_files(folder: str | os.PathLike, kind: str) -> set[str]:
    """The files (relative paths) the command writing ``kind`` wrote into ``folder``: those its manifest lists that it
    can have written (`OWN_FILE_PATTERNS`), or for a `side label` output from before manifests, the fixed names and
    the arrow shards its ``state.json`` lists."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is not None:
        return {name for name in manifest["files"] if _may_own(kind, name)} if manifest["kind"] == kind else set()
    if kind != LABELS or not (folder / KINDS[LABELS][0]).is_file():
        return set()
    owned = set(LEGACY_LABEL_FILES)
    try:
        import json

        state = json.loads((folder / "state.json").read_text())
        owned |= {entry["filename"] for entry in state.get("_data_files", []) if isinstance(entry, dict)}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # then its arrow files count as foreign, and the user is asked to move them
    return {name for name in owned if _may_own(kind, name)}


def foreign_entries(folder: str | os.PathLike, kind: str) -> list[str]:
    """The names directly in ``folder`` that the command writing ``kind`` did not write: anything but a regular
    file (not a symbolic link, not a folder) that its manifest lists by exact name and that matches its own output
    patterns (`OWN_FILE_PATTERNS`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    try:
        owned = owned_files(folder, kind)
    except StateFileError:
        owned = set()
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file() or (entry.name not in owned and entry.name != MANIFEST):
            foreign.append(entry.name)
    return foreign


def is_matches_table(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a table with the columns of ``side evaluate``'s matches (`MATCHES_COLUMNS`), by its content
    whatever it is called: Parquet, Arrow (IPC file, Feather or stream, as `datasets` saves), or a CSV/TSV or JSON
    lines export.

    Only the schema or the first line is read; a file that is none of these, or is damaged, is not a matches table.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(_TEXT_HEAD)
        return MATCHES_COLUMNS <= set(_table_columns(path, head))
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a table
        return False


_TEXT_HEAD = 1 << 16  # a text table's header must lie in its first 64 KiB


def _table_columns(path: str | os.PathLike, head: bytes) -> list[str]:
    """The column names of the table in ``path`` (whose first bytes are ``head``), told apart by its magic bytes."""
    import pyarrow as pa

    if head.startswith(b"PAR1"):
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    if head.startswith(b"ARROW1"):
        return pa.ipc.open_file(path).schema.names
    if head.startswith(b"\xff\xff\xff\xff"):
        return pa.ipc.open_stream(path).schema.names
    if b"\0" in head:
        return []
    first = head.decode("utf-8-sig").splitlines()[0].strip() if head.strip() else ""
    if first.startswith("{"):
        import json

        return list(json.loads(first))
    import csv

    return [name.strip() for name in next(csv.reader([first], csv.Sniffer().sniff(first, delimiters=",;\t|")))]


def training_data_files(folder: str | os.PathLike) -> list[Path]:
    """The files under ``folder`` that hold training images or which training image each generation matches:
    every matches table (``matches.parquet``, or any table with its columns, by content: a renamed or converted copy
    is still one, see [`is_matches_table`]) and the figures (generated | best training match) beside an evaluation
    report. Symbolic links to files are read too, as an upload copies what they point to."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(root, d)))
        root = Path(root)
        tables = [name for name in sorted(files) if name == MATCHES_FILE or (
            (root / name).is_file() and is_matches_table(root / name))]
        found += [root / name for name in tables]
        if KINDS[EVALUATION][0] in files or tables:
            found += sorted(p for p in (root / FIGURES_DIR).rglob("*") if p.is_file())
    return found


def canary_key_files(folder: str | os.PathLike) -> list[Path]:
    """Every canary key (``canary_key.json``, the private triggers of ``side canary make``) under ``folder``."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(root, d)))
        if CANARY_KEY_FILE in files:
            found.append(Path(root) / CANARY_KEY_FILE)
    return found
