"""`side label`: surrogate labels from a synthetic set."""

from __future__ import annotations

import argparse
import time

from ..utils.arg_types import (
    device,
    finite_float,
    non_negative_int,
    positive_int,
)
from .common import check_device, example, summary


def _cohesion_threshold(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return finite_float(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number such as 0.5, got {value!r}") from None


def add_label_command(subparsers) -> None:
    """Register ``side label`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "label",
        help="turn synthetic images into surrogate labels (embed, cluster, filter by cohesion, relabel)",
        description=(
            "SIDE steps 2-5: embed the synthetic images, cluster them with KMeans, keep the clusters whose\n"
            "cohesion (mean cosine of members to the centroid, on centred features) is >= TAU, and label\n"
            "every image by its nearest kept centroid. Writes a datasets directory (image, label, distance,\n"
            "seed), the surrogate_labels.json/.safetensors sidecar and contact_sheet.png."
        ),
        epilog=example("side label --synthetic side-demo/synthetic --clusters 100 --cohesion auto --output side-demo/labels"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--synthetic", required=True, metavar="DIR", help="output directory of `side synthesize`")
    parser.add_argument("--output", required=True, metavar="DIR", help="new (or earlier `side label`) output directory")
    parser.add_argument("--clusters", type=positive_int, default=100, metavar="K", help="KMeans clusters (default: 100, as the paper)")
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
        "(CLIP, DINOv2), or a TorchScript file such as SSCD (its code runs: pass only files you trust)",
    )
    parser.add_argument("--pipeline", default=None, help="target pipeline for --features unet (default: from DIR/generation.json)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="KMeans seed (default: 0)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="embedding batch size (default: 256)")
    parser.add_argument("--min-cluster-size", type=positive_int, default=2, help="never keep smaller clusters (default: 2)")
    parser.add_argument("--device", type=device, default=None, help="device for the feature extractor (default: cpu)")
    parser.set_defaults(func=run_label)


def run_label(args: argparse.Namespace) -> int:
    """Run ``side label`` with the parsed arguments; return the exit code."""
    from ..labels.surrogate_labels import CONTACT_SHEET, format_label_table, label_synthetic

    check_device(args.device)
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
