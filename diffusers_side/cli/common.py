"""What every `side` subcommand shares: the error type, the one-line summary, repo id and device checks, generation flags."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import PIL.Image

from ..storage.embedded import EMBEDDED_CHOICES
from ..utils.arg_types import (
    SCHEDULER_NAMES,
    non_negative_float,
    non_negative_int,
    positive_int,
    target_selection,
    timestep_window,
    unit_interval,
)


class CommandError(Exception):
    """Bad input detected by the CLI itself."""


# OSError covers missing or corrupt files, a file given for a folder, and the Hub being unreachable (ConnectionError);
# a decompression bomb met where images are decoded without the header check of `storage.image_files` is one too.
USER_ERRORS = (ValueError, TypeError, OSError, CommandError, PIL.Image.DecompressionBombError)


def summary(step: str, started: float, output: str) -> None:
    """Print the one-line summary of a finished step."""
    print(f"[side] {step} done in {time.perf_counter() - started:.1f}s -> {output}", flush=True)


def example(text: str) -> str:
    return f"example:\n  {text}"


def command_line() -> str:
    return " ".join(["side", *sys.argv[1:]])


def check_repo_id(repo_id: str, flag: str) -> None:
    """Refuse a malformed Hub repo id before any work (huggingface_hub's own rule)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise CommandError(f"{flag} {repo_id!r} is not a Hub repo id such as your-name/side-audit ({error}).") from None


def check_device(name: str | None) -> None:
    """Refuse a device this machine does not have, before any model is loaded."""
    import torch

    if name is None:
        return
    kind = torch.device(name).type
    if kind != "cpu" and not (hasattr(torch, kind) and getattr(torch, kind).is_available()):
        raise CommandError(f"--device {name}: this machine has no {kind} device; use --device cpu (or omit --device).")


def float_list(text: str) -> list[float]:
    try:
        values = [non_negative_float(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers >= 0 such as 0,1,2,5, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one guidance scale")
    return values


def add_guidance_arguments(parser: argparse.ArgumentParser) -> None:
    """The guidance settings of ``side extract`` and ``side sweep`` (which methods take each: `ExtractionMethod.accepts`)."""
    from ..guidance.registry import GUIDES, guidance_spaces

    parser.add_argument(
        "--exemplars", default=None, metavar="DIR",
        help="side-exemplar: the labelled synthetic set (output of `side label`) whose exact posterior guides instead of a classifier",
    )
    parser.add_argument(
        "--target-selection", type=target_selection, default="uniform", metavar="S",
        help="how each image's target cluster is drawn: uniform (paper, default), weighted (by cohesion), topF "
        "(e.g. top0.2: the most cohesive fifth), duplicates (clusters with near-duplicate synthetic images; side-exemplar), "
        "novel (clusters without any: images the synthetic set does not already show; side-exemplar)",
    )
    parser.add_argument(
        "--guidance-window", type=timestep_window, default=None, metavar="T_MIN:T_MAX",
        help="guide only at timesteps in [T_MIN, T_MAX] (default: every step, as the paper); a window holding none of "
        "the sampling timesteps is refused",
    )
    spaces = "; ".join(f"{name}: {GUIDES[name].description}" for name in guidance_spaces())
    parser.add_argument(
        "--guidance-space", default="xt", choices=guidance_spaces(),
        help=f"which classifier guide side/cond use ({spaces}; default: xt). x0 is not in the paper: the gradient is "
        "back-propagated through the UNet (about 1.7x the cost of xt guidance per image) and lambda is the fraction of the "
        "noise prediction's RMS moved per step, e.g. 0.02-0.2",
    )


    parser.add_argument(
        "--restart-strength", type=unit_interval, default=0.0, metavar="S",
        help="after the chain, re-noise each sample and re-run the last fraction S of the chain from it (restart "
        "sampling; e.g. 0.25; default 0: none). Memorized images are attractors, so near copies come closer; costs "
        "S more UNet passes per image. Not in the paper; not for side-lora",
    )


def guidance_settings(args: argparse.Namespace) -> dict:
    """The `GenerationSettings` fields of `add_guidance_arguments`, with ``--exemplars`` checked before any model loads."""
    if args.exemplars is not None and not (Path(args.exemplars) / "surrogate_labels.json").is_file():
        raise CommandError(f"--exemplars {args.exemplars} is not the output of `side label` (no surrogate_labels.json there).")
    return {
        "exemplars": args.exemplars, "target_selection": args.target_selection, "guidance_window": args.guidance_window,
        "guidance_space": args.guidance_space, "restart_strength": args.restart_strength,
    }


def add_generation_arguments(parser: argparse.ArgumentParser, default_batch: int = 64) -> None:
    parser.add_argument("--pipeline", default="default", metavar="PATH_OR_REPO", help=f"pipeline to audit: a folder, a Hub repo id or an embedded model ({EMBEDDED_CHOICES}; default: default)")
    parser.add_argument("--output", required=True, metavar="DIR", help="new output directory, or the same one to resume")
    parser.add_argument("--batch-size", type=positive_int, default=default_batch, help=f"images per shard (default: {default_batch})")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="run seed; image i uses a seed derived from (seed, i, the run's role): synthesis and extraction never share an image seed, whatever --seed (default: 0)")
    parser.add_argument("--num-inference-steps", type=positive_int, default=50, help="denoising steps (default: 50)")
    parser.add_argument("--scheduler", default=None, choices=SCHEDULER_NAMES, help="sample with another scheduler (default: the saved one); ddpm, ancestral sampling, is the more sensitive audit: every method copies several times more under it on both embedded targets")
    parser.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin weights (only for checkpoints you trust)")


def run_generation_step(step: str, args: argparse.Namespace, settings):
    """Generate (split over accelerate processes) and summarise on the main process."""
    from ..workflows.runs import run_generation

    started = time.perf_counter()
    dataset, accelerator = run_generation(settings, args.output, args.allow_pickle)
    if dataset is not None:
        processes = f" on {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""
        summary(f"{step} ({len(dataset)} {settings.method} images{processes})", started, args.output)
    return dataset
