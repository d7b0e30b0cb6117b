"""Where a model or an image data set comes from: an embedded name, a local folder, or a Hub repo id (+ revision).

Every command and loader of the plugin decides this with one rule, [`ModelSource.parse`]:

1. A `pathlib.Path` (any `os.PathLike` that is not a `str`) is a local path.
2. A string written as a path (absolute, or starting with ``.`` or ``~``, or ending in a file extension such as
   ``.png``) is a local path; it must exist.
3. An embedded model's name (``"default"``, ``"digits-rare"``) is that embedded model, unless a folder of the
   same name exists in the current directory: then it is refused as ambiguous, naming both (write
   ``./default`` for the folder). A path to an embedded model's own folder is that embedded model.
4. An existing folder is a local folder; an existing file is refused (a model or data set is a folder).
5. Anything else is a Hub repo id, checked with `huggingface_hub.utils.validate_repo_id`; ``"user/repo@rev"``
   (or ``revision=``) pins a branch, tag or commit. Nothing is downloaded until [`ModelSource.local_path`].

How a source is recorded (``generation.json``, ``side_lora.json``, run configs) is [`ModelSource.canonical`]:
the embedded name, the absolute path, or ``repo_id[@revision]`` - reading a record back gives the same source
from any working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .embedded import EMBEDDED_CHOICES, EMBEDDED_MODELS, EmbeddedModel

EMBEDDED, LOCAL, HUB = "embedded", "local", "hub"
MODEL, DATASET = "model", "dataset"
# A name ending in one of these is a file path someone meant, never a repo id.
FILE_SUFFIXES = frozenset(
    ".png .jpg .jpeg .webp .bmp .gif .tif .tiff .npy .npz .pt .pth .bin .ckpt .safetensors .parquet .arrow .json "
    ".jsonl .csv .txt .zip .tar .gz".split()
)


@dataclass(frozen=True)
class ModelSource:
    """
    One model (or image data set) source, decided once by [`parse`](#ModelSource.parse).

    Args:
        spec (`str`): what the user gave, as a string.
        kind (`str`): ``"embedded"``, ``"local"`` or ``"hub"``.
        location (`str`): the embedded name, the absolute local path, or the Hub repo id.
        revision (`str`, *optional*): the Hub branch, tag or commit (``None``: the default branch).
        repo_type (`str`): ``"model"`` or ``"dataset"`` (which Hub namespace an id names).

    Example:

    ```py
    >>> from diffusers_side.storage.sources import ModelSource
    >>> ModelSource.parse("default").kind, ModelSource.parse("google/ddpm-cifar10-32@main").canonical()
    ('embedded', 'google/ddpm-cifar10-32@main')
    ```
    """

    spec: str
    kind: str
    location: str
    revision: str | None = None
    repo_type: str = MODEL

    @classmethod
    def parse(
        cls, spec: str | os.PathLike, revision: str | None = None, what: str | None = None, repo_type: str = MODEL
    ) -> "ModelSource":
        """
        Decide what ``spec`` is (see the module docstring for the rule), before anything is loaded or downloaded.

        Args:
            spec (`str` or `os.PathLike`): an embedded name, a local folder, or a Hub repo id (``"user/repo@rev"``).
            revision (`str`, *optional*): the Hub revision (for a repo id only).
            what (`str`, *optional*): how error messages name the source, e.g. ``"--pipeline"``.
            repo_type (`str`, defaults to ``"model"``): ``"dataset"`` for an image data set.

        Returns:
            [`ModelSource`]

        Raises:
            `FileNotFoundError`: a path that does not exist. `NotADirectoryError`: a file. `ValueError`: an embedded
                name shadowed by a folder, a revision on a non-Hub source, or text that is no valid repo id.
        """
        if repo_type not in (MODEL, DATASET):
            raise ValueError(f"repo_type={repo_type!r} must be {MODEL!r} or {DATASET!r}.")
        label = what or ("Image data set" if repo_type == DATASET else "Model source")
        text = os.fspath(spec)
        if not isinstance(text, str):
            raise TypeError(f"{label} must be a str or a path, got {type(spec).__name__}.")
        source = cls._parse_text(text, isinstance(spec, str), label, repo_type)
        if revision is not None:
            if source.kind != HUB:
                raise ValueError(f"{label} {text!r} is {source.describe()}: revision={revision!r} applies to Hub repo ids only.")
            if source.revision not in (None, revision):
                raise ValueError(f"{label} {text!r} names revision {source.revision!r} but revision={revision!r} was also given.")
            source = cls(text, HUB, source.location, revision, repo_type)
        return source

    @classmethod
    def from_record(cls, text: str, what: str | None = None) -> "ModelSource":
        """The source a record names (``generation.json``, ``side_lora.json``: written by [`canonical`]).

        A record holds local folders as absolute paths, so a bare embedded name in it is the embedded model even
        where a folder of that name shadows it; anything else is parsed as [`parse`] does.
        """
        if text in EMBEDDED_MODELS:
            return cls(text, EMBEDDED, text)
        return cls.parse(text, what=what)

    @classmethod
    def _parse_text(cls, text: str, bare: bool, label: str, repo_type: str) -> "ModelSource":
        embedded = EMBEDDED_MODELS.get(text) if bare else None
        if embedded is not None:
            if os.path.isdir(text):
                raise ValueError(
                    f"{label} {text!r} names both the embedded model {text!r} and the folder {Path(text).resolve()}: "
                    f"write ./{text} for the folder, or {_embedded_alternative(embedded, repo_type)}."
                )
            return cls(text, EMBEDDED, text, None, repo_type)
        path = Path(text).expanduser()
        if path.is_dir():
            folder = path.resolve()
            owner = _embedded_folder_owner(folder) if repo_type == MODEL else None
            return cls(text, EMBEDDED, owner.name, None, repo_type) if owner else cls(text, LOCAL, str(folder), None, repo_type)
        if path.exists():
            raise NotADirectoryError(f"{label} {text!r} is a file; pass {_choices(repo_type)}.")
        if not bare or _written_as_path(text):
            raise FileNotFoundError(f"{label} {text!r} does not exist; pass {_choices(repo_type)}.")
        repo_id, _, revision = text.partition("@")
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(repo_id)
        except HFValidationError as error:
            raise ValueError(
                f"{label} {text!r} is no local folder and no valid Hub repo id ({error}); pass {_choices(repo_type)}."
            ) from error
        if "@" in text and not revision:
            raise ValueError(f"{label} {text!r} ends in '@' without a revision; write {repo_id}@BRANCH_TAG_OR_COMMIT.")
        return cls(text, HUB, repo_id, revision or None, repo_type)

    @property
    def embedded(self) -> EmbeddedModel | None:
        """The [`EmbeddedModel`] this source names, else ``None``."""
        return EMBEDDED_MODELS[self.location] if self.kind == EMBEDDED else None

    @property
    def hub_id(self) -> str | None:
        """The Hub repo id (for card metadata such as ``base_model``), ``None`` for embedded and local sources."""
        return self.location if self.kind == HUB else None

    @property
    def name_or_path(self) -> str:
        """What `from_pretrained` / `load_dataset` take: the local folder, or the repo id (pass `revision` with it)."""
        embedded = self.embedded
        return str(embedded.folder) if embedded is not None else self.location

    @property
    def resolved(self) -> str:
        """A spec that parses back to this source from any directory: the folder (embedded or local) or
        ``repo_id[@revision]``. Pass it, not the user's text, from one loader to the next."""
        return self.canonical() if self.kind == HUB else self.name_or_path

    def canonical(self) -> str:
        """How a record names this source: the embedded name, the absolute path, or ``repo_id[@revision]``."""
        if self.kind == HUB and self.revision is not None:
            return f"{self.location}@{self.revision}"
        return self.location

    def describe(self) -> str:
        """A few words for messages: ``"the embedded model 'default'"``, ``"the local folder /x"``, ``"the Hub repo a/b"``."""
        return {
            EMBEDDED: f"the embedded model {self.location!r}",
            LOCAL: f"the local folder {self.location}",
            HUB: f"the Hub {self.repo_type} repo {self.canonical()}",
        }[self.kind]

    def local_path(self, **download_kwargs) -> Path:
        """
        A local folder holding this source: the folder itself, or a snapshot of the Hub repo.

        A repo id goes through `huggingface_hub.snapshot_download`, which honours ``HF_HUB_CACHE`` and
        ``HF_HUB_OFFLINE`` (offline, only what is already cached is used).

        Args:
            download_kwargs: forwarded to `snapshot_download` (``cache_dir``, ``token``, ``local_files_only``,
                ``allow_patterns``); ignored for local and embedded sources.

        Raises:
            `FileNotFoundError`: the repo cannot be fetched (offline and not cached, unknown, no access).
        """
        if self.kind != HUB:
            return Path(self.name_or_path)
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(self.location, revision=self.revision, repo_type=self.repo_type, **download_kwargs)
        except (OSError, ValueError) as error:  # offline and not cached, unknown repo or revision, no access
            raise FileNotFoundError(
                f"{self.spec!r} is not a local folder, and fetching it as a Hub repo id failed ({error}). Check the path, "
                "or the repo id, the revision and your connection."
            ) from error
        return Path(folder)


def resolve_folder(spec: str | os.PathLike, what: str | None = None, **download_kwargs) -> Path:
    """The local folder of a model ``spec`` (parsed by [`ModelSource.parse`], downloaded if it is a repo id).

    Args:
        spec: an embedded name, a folder, or a Hub repo id (``user/repo@rev``).
        what (`str`, *optional*): how error messages name it.
        download_kwargs: ``revision`` and the arguments of `snapshot_download` (``cache_dir``, ``token``,
            ``local_files_only``, ...); ``None`` values are dropped.
    """
    download = {k: v for k, v in download_kwargs.items() if v is not None}
    return ModelSource.parse(spec, download.pop("revision", None), what=what).local_path(**download)


def canonical_source(spec: str | os.PathLike, revision: str | None = None) -> str:
    """[`ModelSource.canonical`] of ``spec``, for settings that are recorded before (or without) being loaded.

    It never raises: a path that does not exist yet (a classifier a later stage writes) is recorded absolute,
    and a bare embedded name is recorded as that name even where a folder of the same name shadows it (a record
    holds local folders as absolute paths). Loading the source still applies [`ModelSource.parse`] in full.
    """
    try:
        return ModelSource.parse(spec, revision).canonical()
    except (OSError, ValueError):
        text = os.fspath(spec)
        return str(Path(text).expanduser().resolve()) if not isinstance(spec, str) or _written_as_path(text) else text


def _written_as_path(text: str) -> bool:
    return (
        os.path.isabs(text)
        or text.startswith((".", "~"))
        or "\\" in text
        or Path(text).suffix.lower() in FILE_SUFFIXES
    )


def _embedded_folder_owner(folder: Path) -> EmbeddedModel | None:
    return next((model for model in EMBEDDED_MODELS.values() if model.folder.resolve() == folder), None)


def _embedded_alternative(model: EmbeddedModel, repo_type: str) -> str:
    if repo_type == MODEL:
        return f"{model.folder} (or run from another directory) for the embedded model"
    return "run from another directory (or rename the folder) for the embedded training set"


def _choices(repo_type: str) -> str:
    if repo_type == DATASET:
        return f"a directory, an embedded model's training set ({EMBEDDED_CHOICES}) or a Hub data set id"
    return f"a folder, a Hub repo id or an embedded model ({EMBEDDED_CHOICES})"
