"""One validated reader per state file: a damaged file is named, with what is wrong and what to do.

Every JSON file a command reads back (to resume, to label, to evaluate, to push) goes through
[`StateFile.read`]: truncated or non-JSON bytes, a list where an object belongs, a missing key, a value
of the wrong type or out of range, and fields that contradict each other all raise [`StateFileError`]
(a `ValueError`) naming the file, instead of ``Expecting value: line 2 column 1`` or a `KeyError` /
`IndexError` deep in the code. Each file has a small schema here (`GENERATION`, `SURROGATE_LABELS`,
`TRAINING_STATE`, `RUN_CONFIG`, `SWEEP_CONFIG`, `SWEEP_RESULTS`, `LORA_CONFIG`, `DEMO_CONFIG`,
`TRAIN_LOG`, `REPORT`, `OUTPUTS_MANIFEST`); keys a schema does not name are kept unchecked.

This module imports nothing heavy, so the CLI can validate before loading any model.

Example:

```py
>>> from diffusers_side.utils.state_files import GENERATION
>>> settings = GENERATION.read("side-demo/synthetic")  # the folder or the file itself
>>> settings["num_images"]
1000
```
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping


class StateFileError(ValueError):
    """A state file is damaged or is not what the plugin wrote; the message names the file and the fix."""


_KIND_NAMES = {"int": "an integer", "number": "a finite number", "str": "a string", "bool": "true or false",
               "list": "a list", "dict": "a JSON object", "null": "null"}


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    return {str: "str", list: "list", dict: "dict"}.get(type(value), type(value).__name__)


def _is_kind(value: Any, kind: str) -> bool:
    found = _kind_of(value)
    if kind == "number":
        return found in ("int", "number") and math.isfinite(value)
    return found == kind


def _shown(value: Any) -> str:
    text = json.dumps(value) if _kind_of(value) in ("int", "str", "bool", "null") else _KIND_NAMES.get(_kind_of(value), "?")
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Field:
    """What one key of a state file must hold.

    Args:
        kinds: the JSON kinds allowed (``"int"``, ``"number"``, ``"str"``, ``"bool"``, ``"list"``, ``"dict"``, ``"null"``).
        required: whether the key must be present.
        items: the kind of every item when the value is a list.
        minimum: the smallest number allowed (for ``int`` / ``number``).
        choices: the values allowed.
    """

    kinds: tuple[str, ...]
    required: bool = False
    items: str | None = None
    minimum: float | None = None
    choices: tuple | None = None

    def problem(self, key: str, value: Any) -> str | None:
        """What is wrong with ``value`` for ``key``, or ``None``."""
        if not any(_is_kind(value, kind) for kind in self.kinds):
            expected = " or ".join(_KIND_NAMES[kind] for kind in self.kinds)
            return f"{key!r} is {_shown(value)}, expected {expected}"
        if self.items is not None and isinstance(value, list):
            for index, item in enumerate(value):
                if not _is_kind(item, self.items):
                    return f"{key!r}[{index}] is {_shown(item)}, expected {_KIND_NAMES[self.items]}"
        if self.minimum is not None and _kind_of(value) in ("int", "number") and value < self.minimum:
            return f"{key!r} is {value}, expected at least {self.minimum:g}"
        if self.choices is not None and value is not None and value not in self.choices:
            return f"{key!r} is {_shown(value)}, expected one of {list(self.choices)}"
        return None


def required(*kinds: str, **options) -> Field:
    """A key that must be present."""
    return Field(kinds, required=True, **options)


def optional(*kinds: str, **options) -> Field:
    """A key that may be absent."""
    return Field(kinds, **options)


@dataclass(frozen=True)
class StateFile:
    """The schema of one state file and its validated reader.

    Args:
        name: the file name (``generation.json``).
        writer: what writes it, for the message (``side synthesize / side extract``).
        fix: what to do about a damaged one.
        fields: key -> [`Field`].
        check: cross-field consistency: returns what is wrong, or ``None``.
    """

    name: str
    writer: str
    fix: str
    fields: Mapping[str, Field] = field(default_factory=dict)
    check: Callable[[dict], str | None] | None = None

    def path(self, location: str | os.PathLike) -> Path:
        """The file itself: ``location`` when it names the file, else ``location / name``."""
        location = Path(location)
        return location if location.name == self.name and not location.is_dir() else location / self.name

    def read(self, location: str | os.PathLike) -> dict:
        """Read and validate the file at ``location`` (the file, or the folder holding it).

        Raises:
            `FileNotFoundError`: the file does not exist.
            [`StateFileError`]: it is damaged (the message names it, what is wrong and the fix).
        """
        path = self.path(location)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (or is not a file); it is written by {self.writer}.")
        return self.parse(path.read_bytes(), path)

    def parse(self, data: bytes | str, path: str | os.PathLike | None = None) -> dict:
        """Validate the bytes of a state file; ``path`` only names it in the error."""
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            payload = json.loads(text)
        except UnicodeDecodeError:
            self._fail(path, "it is not UTF-8 text")
        except RecursionError:
            self._fail(path, "it is nested too deeply to be one of ours")
        except ValueError as error:  # json.JSONDecodeError, and integers too long to convert
            self._fail(path, f"it is truncated or not JSON ({error})")
        if not isinstance(payload, dict):
            self._fail(path, f"it holds {_KIND_NAMES.get(_kind_of(payload), 'a value')}, not the JSON object {self.writer} writes")
        for key, spec in self.fields.items():
            if key not in payload:
                if spec.required:
                    self._fail(path, f"it lacks the key {key!r}")
                continue
            problem = spec.problem(key, payload[key])
            if problem:
                self._fail(path, problem)
        problem = self.check(payload) if self.check is not None else None
        if problem:
            self._fail(path, problem)
        return payload

    def _fail(self, path, problem: str):
        shown = path if path is not None else self.name
        raise StateFileError(f"{shown} is damaged: {problem}. It is written by {self.writer}; {self.fix}") from None


# ----------------------------------------------------------------------------------------------------
# The files


def _labels_consistent(payload: dict) -> str | None:
    """The clusters, kept ids and counts of ``surrogate_labels.json`` agree with each other."""
    num_clusters = payload["num_clusters"]
    for key in ("cluster_sizes", "cohesion"):
        if len(payload[key]) != num_clusters:
            return f"{key!r} has {len(payload[key])} entries but 'num_clusters' is {num_clusters}"
    kept = payload["kept_cluster_ids"]
    if len(set(kept)) != len(kept) or any(not 0 <= k < num_clusters for k in kept):
        return f"'kept_cluster_ids' must be distinct cluster ids in 0..{num_clusters - 1}, got {kept[:8]}"
    if len(kept) < 2:
        return f"'kept_cluster_ids' lists {len(kept)} cluster(s); SIDE needs at least 2 surrogate labels"
    if len(payload["label_counts"]) != len(kept):
        return f"'label_counts' has {len(payload['label_counts'])} entries for {len(kept)} kept clusters"
    return None


def _history_entries(payload: dict) -> str | None:
    bad = [i for i, entry in enumerate(payload["history"]) if not isinstance(entry, dict)]
    return f"'history'[{bad[0]}] is not a JSON object" if bad else None


def _figure_paths(payload: dict) -> str | None:
    figures = payload.get("files", {}).get("figures", {})
    if not isinstance(figures, dict) or not all(isinstance(v, str) for v in figures.values()):
        return "'files'/'figures' must map each group to a figure path"
    return None


def _reports_by_scale(payload: dict) -> str | None:
    for scale, report in payload.items():
        try:
            float(scale)
        except ValueError:
            return f"key {scale!r} is not a guidance scale"
        if not isinstance(report, dict) or not isinstance(report.get("methods"), dict):
            return f"the report of scale {scale} is not an evaluation report (no 'methods')"
    return None


_FINGERPRINT = optional("str", "null")
_PATH = optional("str", "null")

GENERATION = StateFile(
    "generation.json",
    "`side synthesize` / `side extract`",
    "restore it, or generate again into a new --output (its shards cannot be trusted without it).",
    {
        "pipeline": optional("str"), "method": required("str"), "num_images": required("int", minimum=1),
        "batch_size": optional("int", minimum=1), "seed": optional("int", minimum=0),
        "num_inference_steps": optional("int", minimum=1), "guidance_scale": optional("number", minimum=0),
        "scheduler": optional("str", "null"), "classifier": _PATH, "exemplars": _PATH,
        "model_fingerprint": _FINGERPRINT, "classifier_fingerprint": _FINGERPRINT, "config_fingerprint": _FINGERPRINT,
        "exemplars_fingerprint": _FINGERPRINT, "target_selection": optional("str"),
        "guidance_window": optional("list", "null", items="number"), "guidance_space": optional("str"),
        "restart_strength": optional("number", minimum=0),
        "seed_stream": optional("str", "null"),
    },
)

SURROGATE_LABELS = StateFile(
    "surrogate_labels.json",
    "`side label`",
    "run `side label` again into this folder to rewrite it.",
    {
        "format_version": optional("int", minimum=1), "kept_cluster_ids": required("list", items="int"),
        "cluster_sizes": required("list", items="int"), "cohesion": required("list", items="number"),
        "label_counts": required("list", items="int"), "extractor": required("str"),
        "num_clusters": required("int", minimum=2), "cohesion_threshold": required("number", "str"),
        "resolved_cohesion_threshold": required("number"), "min_cluster_size": required("int", minimum=1),
        "num_synthetic": required("int", minimum=1), "seed": required("int"), "n_init": optional("int", minimum=1),
        "feature_dim": optional("int", minimum=1),
    },
    _labels_consistent,
)

TRAINING_STATE = StateFile(
    "training_state.json",
    "the training scripts when they save a checkpoint",
    "delete this checkpoint folder to resume from an earlier one (or start over with --overwrite_output_dir).",
    {"global_step": required("int", minimum=0), "history": required("list"), "run": required("dict")},
    _history_entries,
)

RUN_CONFIG = StateFile(
    "run_config.json",
    "the training scripts when a run starts",
    "restore it, or start the run over with --overwrite_output_dir.",
    {"script": required("str")},
)

SWEEP_CONFIG = StateFile(
    "sweep_config.json",
    "`side sweep`",
    "restore it, or run the sweep into a new --output.",
    {"guidance_scales": required("list", items="number"), "reference": optional("str")},
)

SWEEP_RESULTS = StateFile(
    "sweep.json", "`side sweep`", "delete it and run the sweep again to rewrite it.", {}, _reports_by_scale
)

LORA_CONFIG = StateFile(
    "side_lora.json",
    "`side train-lora` (SIDELoRAPipeline.save_pretrained)",
    "train or save the adapters again.",
    {
        "pipeline_class": required("str", choices=("SIDELoRAPipeline", "SIDELoRATextPipeline")),
        "base_model": required("str", "null"), "num_labels": required("int", minimum=1), "rank": required("int", minimum=1),
        "lora_alpha": required("number"), "target_modules": required("list", items="str"),
        "label_info": optional("dict", "null"), "base_unet_config": required("dict"), "prompt": optional("str", "null"),
    },
)

DEMO_CONFIG = StateFile(
    "demo_config.json", "`side demo`", "restore it, or run the demo into a new --output.", {"preset": optional("str")}
)

TRAIN_LOG = StateFile(
    "train_log.json",
    "the training scripts at the end of a run",
    "train again into a new --output_dir.",
    {"global_step": required("int", minimum=0), "evaluation": required("dict"), "evaluated_on": required("str")},
)

REPORT = StateFile(
    "report.json", "`side evaluate`", "delete it and evaluate again.", {"files": optional("dict")}, _figure_paths
)

OUTPUTS_MANIFEST = StateFile(
    ".side_outputs.json",
    "every `side` command that writes an output folder (it lists the files the command wrote there)",
    "delete the folder's outputs and run the command again, or choose another output folder.",
    {"kind": required("str"), "files": required("list", items="str")},
)

CANDIDATES_SUMMARY = StateFile(
    "candidates.json",
    "`side candidates` (and `side extract` when it finishes)",
    "run `side candidates --generated` on the generations again to rewrite it.",
    {
        "num_generations": required("int", minimum=0), "num_candidates": required("int", minimum=0),
        "num_groups": required("int", minimum=0), "generation_settings": optional("dict"), "top": optional("list"),
    },
)

STATE_FILES = (GENERATION, SURROGATE_LABELS, TRAINING_STATE, RUN_CONFIG, SWEEP_CONFIG, SWEEP_RESULTS, LORA_CONFIG,
               DEMO_CONFIG, TRAIN_LOG, REPORT, OUTPUTS_MANIFEST, CANDIDATES_SUMMARY)
