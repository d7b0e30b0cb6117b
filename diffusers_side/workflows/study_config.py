"""The settings of a study (``side study CONFIG``): what is compared, on which seeds, and how it is reported.

A study config is a JSON file:

```json
{
  "pipeline": "digits-rare",
  "reference": "digits-rare",
  "inputs": {"num_synthetic": 1000, "num_clusters": 100, "scheduler": "ddpm"},
  "selection": {"seed": 1, "num_images": 500},
  "report": {"seed": 2, "num_images": 5000},
  "num_inference_steps": 50,
  "configurations": [
    {"name": "uncond-ddpm", "method": "uncond", "scheduler": "ddpm"},
    {"name": "exemplar-10", "method": "side-exemplar", "scheduler": "ddpm", "guidance_scale": 10}
  ]
}
```

- ``inputs``: the attacker's inputs (synthesis, labels, classifiers), built once by the demo's stages:
  any `diffusers_side.workflows.demo.DemoConfig` field about them, and ``preset``.
- ``selection`` / ``report``: the two phases, on different run seeds (refused when equal), so settings chosen on
  one are reported on images never used to choose them. Every image seed is an extraction-stream seed, disjoint
  from the synthesis stream of the inputs (`diffusers_side.generation.seeds`).
- ``configurations``: one `side extract` run each (``name`` names its folder); at least one ``uncond`` without a
  restart, the baseline that the equal-budget comparison extends. Every other configuration (guided, or plain
  sampling with ``restart_strength``) is charged for what it runs and compared with that baseline at equal budget.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..methods.lora import LoRAMethod
from ..methods.registry import extraction_method_names, get_method
from ..storage.embedded import DEFAULT
from ..utils.arg_types import SCHEDULER_NAMES
from .demo import DemoConfig
from .study_values import check_configuration_values, check_input_values, refuse_duplicate_keys

PHASES = ("selection", "report")
RESERVED_NAME = "synthetic"  # the synthetic set's evaluation folder is synthetic-eval
# DemoConfig fields that are the study's own (top-level keys) or about the demo's extraction, not its inputs.
NOT_INPUTS = {"pipeline", "reference", "num_images", "guidance_scale", "sweep_guidance_scales", "selection_num_images",
              "selection_seed", "batch_size"}
INPUT_KEYS = sorted({f.name for f in fields(DemoConfig)} - NOT_INPUTS)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class Phase:
    """One phase of a study: its run seed, N_G per configuration and, optionally, the names of the configurations it
    runs (``None``: all of them; e.g. the report phase runs only those the selection phase chose)."""

    seed: int
    num_images: int
    configurations: list[str] | None = None


@dataclass
class Configuration:
    """One extraction setting of a study (the `GenerationSettings` fields it sets; ``None``: the method's default)."""

    name: str
    method: str
    scheduler: str | None = None
    guidance_scale: float | None = None
    target_selection: str = "uniform"
    guidance_window: list[float] | None = None
    guidance_space: str = "xt"
    restart_strength: float = 0.0


def is_baseline(configuration: Configuration) -> bool:
    """Plain sampling without a restart: the baseline a study extends to every other configuration's budget."""
    return configuration.method == "uncond" and not configuration.restart_strength


@dataclass
class StudyConfig:
    """A study's settings (see the module docstring); build it with [`StudyConfig.from_dict`] or [`load_study_config`]."""

    reference: str
    configurations: list[Configuration]
    pipeline: str = DEFAULT
    inputs: dict = field(default_factory=dict)
    selection: Phase = field(default_factory=lambda: Phase(1, 500))
    report: Phase = field(default_factory=lambda: Phase(2, 5000))
    num_inference_steps: int = 50
    batch_size: int = 250
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    candidate_ks: list[int] = field(default_factory=lambda: [10, 50, 100])

    @classmethod
    def from_dict(cls, payload: dict) -> "StudyConfig":
        """A config from its JSON payload; unknown keys are refused (a typo must not fall back to a default).

        Raises:
            `ValueError`: an unknown or missing key, or a value of the wrong shape, naming it.
        """
        if not isinstance(payload, dict):
            raise ValueError(f"A study config is a JSON object; got {type(payload).__name__}.")
        _check_keys(payload, {f.name for f in fields(cls)}, "the study config", required=("reference", "configurations"))
        values = dict(payload)
        for phase in PHASES:
            if phase in values:
                _check_keys(values[phase], {"seed", "num_images", "configurations"}, f"{phase!r}", required=("seed", "num_images"))
                values[phase] = Phase(**values[phase])
        if not isinstance(values["configurations"], list) or not values["configurations"]:
            raise ValueError("'configurations' must be a non-empty list of {\"name\", \"method\", ...} objects.")
        known = {f.name for f in fields(Configuration)}
        for position, item in enumerate(values["configurations"]):
            _check_keys(item, known, f"configuration {position}", required=("name", "method"))
        values["configurations"] = [Configuration(**item) for item in values["configurations"]]
        return cls(**values)

    def to_dict(self) -> dict:
        """The JSON payload (recorded in the study folder)."""
        return json.loads(json.dumps(asdict(self)))

    def phase(self, name: str) -> Phase:
        """The `Phase` called ``name`` (``"selection"`` or ``"report"``)."""
        if name not in PHASES:
            raise ValueError(f"phase {name!r} is not one of {PHASES}.")
        return getattr(self, name)

    def validate(self) -> None:
        """Raise `ValueError` naming the bad value and the fix, before any model is loaded."""
        for name in PHASES:
            phase = self.phase(name)
            if not isinstance(phase.seed, int) or phase.seed < 0 or not isinstance(phase.num_images, int) or phase.num_images < 1:
                raise ValueError(f"{name}: seed {phase.seed!r} must be an integer >= 0 and num_images {phase.num_images!r} >= 1.")
            if phase.configurations is not None:
                names = [c.name for c in self.configurations]
                unknown = [n for n in phase.configurations if n not in names]
                if unknown or not any(is_baseline(c) for c in self.configurations if c.name in phase.configurations):
                    raise ValueError(
                        f"{name}: configurations {phase.configurations!r} must name configurations of this study "
                        f"({names}; unknown: {unknown}) and include an 'uncond' one without a restart, the baseline."
                    )
        if self.selection.seed == self.report.seed:
            raise ValueError(
                f"The selection seed equals the report seed ({self.report.seed}): the reported images would be those the "
                "settings were chosen on; give 'report' another seed."
            )
        for name in ("num_inference_steps", "batch_size", "bootstrap_resamples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer.")
        if not self.candidate_ks or any(not isinstance(k, int) or k < 1 for k in self.candidate_ks):
            raise ValueError(f"candidate_ks={self.candidate_ks!r} must be a non-empty list of positive integers.")
        unknown = sorted(set(self.inputs) - set(INPUT_KEYS))
        if unknown:
            raise ValueError(f"inputs {unknown} are not inputs of a study; use any of {INPUT_KEYS}.")
        for name in ("pipeline", "reference"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)!r} must name a model or data set (a folder or a Hub id).")
        check_input_values(self.inputs)
        self.validate_configurations()
        for configuration in self.configurations:
            check_configuration_values(configuration)

    def validate_configurations(self) -> None:
        """Names unique and folder-safe, methods the study can run, at least one ``uncond`` baseline."""
        names = [c.name for c in self.configurations]
        for configuration in self.configurations:
            if not isinstance(configuration.name, str) or not NAME_PATTERN.fullmatch(configuration.name):
                raise ValueError(f"configuration name {configuration.name!r} must be letters, digits, '_', '.' or '-'.")
            if configuration.name == RESERVED_NAME:
                raise ValueError(
                    f"configuration name {configuration.name!r} is reserved (the study scores the synthetic set in "
                    f"'{RESERVED_NAME}-eval'); rename the configuration."
                )
            if names.count(configuration.name) > 1:
                raise ValueError(f"configuration name {configuration.name!r} is used twice; names are folder names.")
            if configuration.method not in extraction_method_names():
                raise ValueError(f"configuration {configuration.name!r}: method {configuration.method!r} is not one of {extraction_method_names()}.")
            if isinstance(get_method(configuration.method), LoRAMethod):
                raise ValueError(
                    f"configuration {configuration.name!r}: method {configuration.method!r} samples a LoRA model, which a "
                    "study does not train; compare it with `side train-lora` + `side extract` (docs/lora.md)."
                )
            if configuration.scheduler is not None and configuration.scheduler not in SCHEDULER_NAMES:
                raise ValueError(f"configuration {configuration.name!r}: scheduler {configuration.scheduler!r} is not one of {SCHEDULER_NAMES}.")
        if not any(is_baseline(c) for c in self.configurations):
            raise ValueError(
                "No 'uncond' configuration without a restart: plain sampling is the baseline every configuration is "
                "compared with, at equal N_G and at equal budget; add {\"name\": \"uncond\", \"method\": \"uncond\"}."
            )


def _check_keys(payload, known: set, where: str, required: tuple = ()) -> None:
    if not isinstance(payload, dict):
        raise ValueError(f"{where} must be a JSON object; got {payload!r}.")
    unknown = sorted(set(payload) - known)
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown}; known: {sorted(known)}.")
    missing = [key for key in required if key not in payload]
    if missing:
        raise ValueError(f"{where} lacks {missing}.")


def load_study_config(path: str | os.PathLike) -> StudyConfig:
    """Read and validate a study config file.

    Raises:
        `FileNotFoundError`: no such file. `ValueError`: not JSON, or a bad value (see `StudyConfig.validate`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Study config {path} does not exist; write one (see `side study --help`).")
    try:
        payload = json.loads(path.read_text(), object_pairs_hook=refuse_duplicate_keys)
        config = StudyConfig.from_dict(payload)
        config.validate()
    except json.JSONDecodeError as error:
        raise ValueError(f"Study config {path} is not valid JSON: {error}.") from None
    except (ValueError, TypeError) as error:  # every message names the key; here the file is named too
        raise ValueError(f"Study config {path}: {error}") from None
    return config
