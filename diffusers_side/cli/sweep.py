"""`side sweep`: one extraction per guidance scale, each scored."""

from __future__ import annotations

import argparse
import time

from ..storage.embedded import EMBEDDED_CHOICES
from ..utils.arg_types import image_count
from .common import add_generation_arguments, add_guidance_arguments, example, float_list, guidance_settings, summary
from .evaluate import similarity_arguments


def add_sweep_command(subparsers) -> None:
    """Register ``side sweep`` on ``subparsers``."""
    from ..methods.registry import guided_method_names, methods_help

    parser = subparsers.add_parser(
        "sweep",
        help="extract with SIDE at several guidance scales and plot AMS/UMS against lambda (paper Fig. 10)",
        description=(
            "Run `side extract --method side` (or --method) at every scale (same seeds), evaluate each, and plot the\n"
            "curves. The methods it can sweep (default guidance scale):\n" + methods_help(guided_method_names())
        ),
        epilog=example("side sweep --pipeline side-demo/classifier-side --guidance-scales 0,1,2,5,10,20 --num-images 500 --output side-sweep"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--method", default="side", choices=guided_method_names(), help="guided method to sweep (default: side; see above; side-lora sweeps the classifier-free guidance scale of a `side train-lora` folder, side-exemplar needs --exemplars)")
    parser.add_argument("--guidance-scales", type=float_list, default=[0, 1, 2, 5, 10, 20], metavar="L1,L2,...", help="lambdas (default: 0,1,2,5,10,20)")
    parser.add_argument("--num-images", type=image_count, required=True, metavar="N", help="candidates per scale (N_G)")
    parser.add_argument("--reference", default="default", metavar="DATASET", help=f"training set to score against: embedded ({EMBEDDED_CHOICES}; default: default), a folder or a Hub id")
    parser.add_argument("--similarity", default="carlini", help="l2, carlini or a feature extractor (default: carlini)")
    parser.add_argument("--classifier", default=None, metavar="PATH", help="time-dependent classifier replacing the pipeline's own")
    add_guidance_arguments(parser)
    add_generation_arguments(parser)
    parser.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    """Run ``side sweep`` with the parsed arguments; return the exit code."""
    from ..generation.settings import GenerationSettings
    from ..workflows.runs import run_sweep as sweep

    started = time.perf_counter()
    base = GenerationSettings(
        pipeline=args.pipeline, method=args.method, num_images=args.num_images, batch_size=args.batch_size, seed=args.seed,
        num_inference_steps=args.num_inference_steps, scheduler=args.scheduler, classifier=args.classifier,
        **guidance_settings(args),
    )
    plot = sweep(
        base, args.guidance_scales, args.output, args.reference, allow_pickle=args.allow_pickle,
        on_scale_done=lambda scale, path: summary(f"sweep lambda={scale:g}", started, str(path)),
        **similarity_arguments(args.similarity),
    )
    summary("sweep", started, str(plot))
    return 0
