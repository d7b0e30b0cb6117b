"""Value checks of a study config (``side study CONFIG``) that need only the file: types and ranges of its ``inputs``
and of each configuration's settings, so a bad value is named by its key before any model is loaded.

`diffusers_side.workflows.study_config.load_study_config` calls these and names the file in the error.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields

from ..utils.arg_types import SCHEDULER_NAMES, target_selection
from .demo import DemoConfig

# DemoConfig inputs that are counts (>= 1) and seeds (>= 0); the rest are checked by the type of their default.
_SEEDS = {"seed", "selection_seed"}
_OPTIONAL_COUNTS = {"classifier_steps"}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def check_input_values(inputs: dict) -> None:
    """Raise `ValueError` naming ``inputs.KEY`` when a value has the wrong type or range for its `DemoConfig` field.

    Example:
        >>> check_input_values({"num_synthetic": 8})
    """
    defaults = {f.name: f.default for f in fields(DemoConfig)}
    for key, value in inputs.items():
        default = defaults.get(key)
        where = f"inputs.{key}={value!r}"
        if key == "scheduler":
            if value is not None and value not in SCHEDULER_NAMES:
                raise ValueError(f"{where} is not one of {SCHEDULER_NAMES}.")
        elif key in _OPTIONAL_COUNTS or (_is_int(default) and key not in _SEEDS):
            if not (_is_int(value) and value >= 1) and not (value is None and key in _OPTIONAL_COUNTS):
                raise ValueError(f"{where} must be a positive integer.")
        elif key in _SEEDS:
            if not (_is_int(value) and value >= 0):
                raise ValueError(f"{where} must be an integer >= 0.")
        elif isinstance(default, float) and not (_is_number(value) and value >= 0):
            raise ValueError(f"{where} must be a finite number >= 0.")
        elif isinstance(default, str) and key != "cohesion" and not isinstance(value, str):
            raise ValueError(f"{where} must be a string.")


def check_configuration_values(configuration) -> None:
    """Raise `ValueError` naming the configuration and key when a guidance setting has the wrong type or range."""
    where = f"configuration {configuration.name!r}"
    scale = configuration.guidance_scale
    if scale is not None and not (_is_number(scale) and scale >= 0):
        raise ValueError(f"{where}: guidance_scale={scale!r} must be a finite number >= 0 (or absent: the method's default).")
    window = configuration.guidance_window
    if window is not None and not (
        isinstance(window, list) and len(window) == 2 and all(_is_number(t) for t in window) and 0 <= window[0] <= window[1]
    ):
        raise ValueError(f"{where}: guidance_window={window!r} must be [T_MIN, T_MAX] with 0 <= T_MIN <= T_MAX.")
    restart = configuration.restart_strength
    if not (_is_number(restart) and 0 <= restart <= 1):
        raise ValueError(f"{where}: restart_strength={restart!r} must be a number in [0, 1] (0: no restart).")
    try:
        target_selection(configuration.target_selection) if isinstance(configuration.target_selection, str) else target_selection("?")
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"{where}: target_selection: {error}.") from None


def refuse_duplicate_keys(pairs: list) -> dict:
    """A `json.loads` ``object_pairs_hook``: a key given twice is refused (JSON keeps the last one silently)."""
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ValueError(f"key(s) {twice} given twice in one object; keep one.")
    return dict(pairs)
