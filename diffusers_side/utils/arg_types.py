"""Argument types for the `side` command and the training scripts: bad values fail at parse time.

This module imports nothing heavy (no torch, no diffusers), so ``side --help`` and every argument
error answer at once. Each type raises `argparse.ArgumentTypeError` naming the value and what is
expected; [`OneLineErrorParser`] prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import re

# Device types torch accepts in `torch.device("TYPE[:INDEX]")` that a user can have; availability is
# checked when the command runs (see `diffusers_side.cli.check_device`).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "npu", "hpu", "mtia")
# Names of `--scheduler`; `diffusers_side.pipelines.loading.SCHEDULERS` maps each to its diffusers class.
SCHEDULER_NAMES = ("ddpm", "ddim", "euler", "euler-ancestral", "dpm-solver", "unipc")
# How `side demo` chooses lambda from its sweep (`diffusers_side.workflows.demo_sweep`): attacker-side first.
SWEEP_CRITERIA = ("blind-groups", "auditor-tuned")


class OneLineErrorParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose errors are one line (``PROG: error: MESSAGE (see PROG --help)``), exit 2."""

    def error(self, message: str):
        # a control character typed into an argument (a carriage return, a newline) would break the line: escape it
        shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)
        self.exit(2, f"{self.prog}: error: {shown} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        """As `argparse.ArgumentParser.parse_args`, but an unknown argument is blamed on the subcommand it was given to
        (``side canary audit: error: unrecognized arguments: ...``), whose ``--help`` lists the right flags."""
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self
            while True:  # down the chosen subcommands: `side`, `side canary`, `side canary audit`
                chosen = [a.choices.get(getattr(namespace, a.dest, None)) for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
                if not chosen or chosen[0] is None:
                    break
                parser = chosen[0]
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace


def _number(text: str, kind: type, expected: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r} (not a finite number)")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


MAX_IMAGES = 10_000_000  # more images than any audit needs (the paper's largest N_G is 51,200): a typo, not a plan


def image_count(text: str) -> int:
    """A number of images to generate: an integer in [1, `MAX_IMAGES`] (``10000000000000`` is a typo that would
    otherwise start sampling and fill the disk)."""
    value = positive_int(text)
    if value > MAX_IMAGES:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_IMAGES:,} images, got {text!r}; split a larger audit into runs")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds, worker counts, warm-up steps)."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (``nan`` and ``inf`` are refused)."""
    return _number(text, float, "a finite number")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (guidance scales, weight decay, clipping norms)."""
    value = _number(text, float, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, epsilons)."""
    value = _number(text, float, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """A finite number in [0, 1] (decays, betas)."""
    value = _number(text, float, "a number in [0, 1]")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def device(text: str) -> str:
    """A torch device string such as ``cpu``, ``cuda`` or ``cuda:1`` (checked for syntax only here)."""
    match = re.fullmatch(r"([a-z]+)(:\d+)?", text)
    if not match or match.group(1) not in DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:1 (types: {', '.join(DEVICE_TYPES)}), got {text!r}")
    return text



def timestep_window(text: str) -> list[float]:
    """``T_MIN:T_MAX`` with 0 <= T_MIN <= T_MAX (a guidance window along the diffusion time)."""
    low, colon, high = text.partition(":")
    if colon:
        try:
            window = [float(low), float(high)]
        except ValueError:
            window = []
        if len(window) == 2 and all(math.isfinite(t) for t in window) and 0 <= window[0] <= window[1]:
            return window
    raise argparse.ArgumentTypeError(f"expected T_MIN:T_MAX with 0 <= T_MIN <= T_MAX (e.g. 500:1000), got {text!r}")


# --target-selection's vocabulary (what each one draws: `diffusers_side.guidance.targets`); here, torch-free, so the
# CLI parser checks it without importing the sampler
NAMED_SELECTIONS = ("uniform", "weighted", "duplicates", "novel")  # the ones without a parameter; and topF
READS_SYNTHETIC = ("duplicates", "novel")  # need the labelled synthetic images


def target_selection(text: str) -> str:
    """One of `NAMED_SELECTIONS` or ``topF`` with 0 < F <= 1 (e.g. ``top0.2``; see `diffusers_side.guidance.targets`)."""
    if text in NAMED_SELECTIONS:
        return text
    match = re.fullmatch(r"top(0?\.\d+|1(\.0*)?)", text)
    if match and 0 < float(match.group(1)) <= 1:
        return text
    raise argparse.ArgumentTypeError(f"expected {', '.join(NAMED_SELECTIONS)} or topF with 0 < F <= 1 (e.g. top0.2), got {text!r}")
