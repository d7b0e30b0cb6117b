"""The `side` command line: one subcommand per step of a SIDE audit.

Every subcommand validates its arguments before the expensive work, prints a one-line summary per
finished step (time and output path) and exits non-zero with a one-line error on bad input (the
traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import sys
import time


class CommandError(Exception):
    """Bad input detected by the CLI itself."""


USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, CommandError)


def summary(step: str, started: float, output: str) -> None:
    """Print the one-line summary of a finished step."""
    print(f"[side] {step} done in {time.perf_counter() - started:.1f}s -> {output}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="side",
        description="SIDE: extract training images from an unconditional diffusion model, to audit it for memorization.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def _example(text: str) -> str:
    return f"example:\n  {text}"


# Each `add_*` registers one subcommand and sets `func` to the function that runs it.
COMMANDS: list = []


def _cohesion_threshold(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number such as 0.5, got {value!r}") from None


def add_label_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "label",
        help="turn synthetic images into surrogate labels (embed, cluster, filter by cohesion, relabel)",
        description=(
            "SIDE steps 2-5: embed the synthetic images, cluster them with KMeans, keep the clusters whose "
            "cohesion (mean cosine of members to the centroid, on centred features) is >= TAU, and label every "
            "image by its nearest kept centroid. Writes a datasets directory (image, label, distance, seed), "
            "the surrogate_labels.json/.safetensors sidecar and contact_sheet.png."
        ),
        epilog=_example("side label --synthetic side-demo/synthetic --clusters 100 --cohesion auto --output side-demo/labels"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--synthetic", required=True, metavar="DIR", help="output directory of `side synthesize`")
    parser.add_argument("--output", required=True, metavar="DIR", help="new (or earlier `side label`) output directory")
    parser.add_argument("--clusters", type=int, default=100, metavar="K", help="KMeans clusters (default: 100, as the paper)")
    parser.add_argument(
        "--cohesion",
        type=_cohesion_threshold,
        default="auto",
        metavar="TAU",
        help="keep clusters with cohesion >= TAU (the paper uses 0.5 with SSCD), or 'auto' (default): Otsu's split "
        "between tight and diffuse clusters, since cosine scales differ between feature extractors",
    )
    parser.add_argument(
        "--features",
        default="unet",
        metavar="unet|pixels|MODEL|FILE.pt",
        help="feature extractor: the target's own UNet (default), raw pixels, a transformers model id or folder "
        "(CLIP, DINOv2), or a TorchScript file such as SSCD",
    )
    parser.add_argument("--pipeline", default=None, help="target pipeline for --features unet (default: from DIR/generation.json)")
    parser.add_argument("--seed", type=int, default=0, help="KMeans seed (default: 0)")
    parser.add_argument("--batch-size", type=int, default=256, help="embedding batch size (default: 256)")
    parser.add_argument("--min-cluster-size", type=int, default=2, help="never keep smaller clusters (default: 2)")
    parser.add_argument("--device", default=None, help="device for the feature extractor (default: cpu)")
    parser.set_defaults(func=run_label)


def run_label(args: argparse.Namespace) -> int:
    from .surrogate_labels import CONTACT_SHEET, format_label_table, label_synthetic

    started = time.perf_counter()
    _, labels = label_synthetic(
        args.synthetic,
        args.output,
        num_clusters=args.clusters,
        cohesion=args.cohesion,
        features=args.features,
        seed=args.seed,
        batch_size=args.batch_size,
        pipeline=args.pipeline,
        min_cluster_size=args.min_cluster_size,
        device=args.device,
    )
    print(format_label_table(labels))
    print(f"contact sheet: {args.output}/{CONTACT_SHEET}")
    summary("label", started, args.output)
    return 0


COMMANDS.append(add_label_command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"side {args.command}: error: {error}", file=sys.stderr)
        return 2
