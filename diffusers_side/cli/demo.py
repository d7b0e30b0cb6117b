"""`side demo`: the whole audit of one model in one command."""

from __future__ import annotations

import argparse

from ..models.classifier_size import CLASSIFIER_SIZES
from ..storage.embedded import EMBEDDED_CHOICES
from ..utils.arg_types import (
    SCHEDULER_NAMES,
    SWEEP_CRITERIA,
    image_count,
    non_negative_float,
    non_negative_int,
)
from .common import example, float_list


def add_demo_command(subparsers) -> None:
    """Register ``side demo`` on ``subparsers``."""
    from ..methods.registry import get_method, guided_method_names

    parser = subparsers.add_parser(
        "demo",
        help="the whole audit of the embedded digits model: synthesize, label, train, extract x4, evaluate",
        description=(
            "Audit the embedded memorizing DDPM end to end, offline: SIDE (and SIDE-exemplar) against Carlini UnCond and\n"
            "Carlini Cond at the same N_G and seeds, sampled ancestrally by default. Writes report.md, report.json\n"
            "and figures into --output. Re-running resumes."
        ),
        epilog=example(
            "side demo --output side-demo\n  side demo --pipeline digits-rare --reference digits-rare --output side-demo-rare"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default="side-demo", metavar="DIR", help="output directory (default: ./side-demo)")
    parser.add_argument("--quick", action="store_true", help="tiny N for a smoke test (seconds; numbers are meaningless)")
    parser.add_argument(
        "--preset", choices=("demo", "paper"), default=None,
        help="demo (default): N_syn 1000, ResNet-18 width 16 for 600 steps, each method's default lambda, N_G 500 (minutes on 2 cores); "
        "paper: the paper's scale, N_syn 10,000, K 100, classifiers sized by the auto rule (--classifier-size paper: the "
        "paper's ResNet-34 width 64) for 20 epochs, lambda swept over 0,1,2,5,10,20,50 on a selection seed and chosen "
        "by blind near-duplicate groups, N_G 5,000 (benchmarks README section 7). "
        "The flags below override the preset's values",
    )
    parser.add_argument("--pipeline", default="default", metavar="PATH_OR_REPO", help=f"pipeline to audit: a folder, a Hub repo id or an embedded model ({EMBEDDED_CHOICES}; default: default)")
    parser.add_argument("--reference", default="default", metavar="DATASET", help=f"its training set: embedded ({EMBEDDED_CHOICES}; default: default), a folder or a Hub id")
    defaults = ", ".join(
        f"{name} {get_method(name).default_guidance_scale:g}" for name in guided_method_names() if get_method(name).in_demo
    )
    parser.add_argument(
        "--guidance-scale", type=non_negative_float, default=None, metavar="L",
        help=f"lambda of every guided method (default: each method's own, {defaults}; with --preset paper it replaces the sweep)",
    )
    parser.add_argument(
        "--scheduler", default=None, choices=SCHEDULER_NAMES,
        help="sampler of every stage (default: ddpm, 50-step ancestral sampling, under which the embedded targets "
        "copy most; ddim: the targets' saved sampler)",
    )
    parser.add_argument(
        "--classifier-size", default=None, choices=CLASSIFIER_SIZES,
        help="the classifiers' layout and width: paper (ResNet-34, width 64), demo (ResNet-18, width 16) or auto (sized "
        "to the labelled set: the ResNet-18 layout, width 16, 32 or 64 by the number of labelled images; benchmarks "
        "README 'Classifier size'); default: the preset's",
    )
    parser.add_argument(
        "--sweep-guidance-scales", type=float_list, default=None, metavar="L1,L2,...",
        help="choose SIDE's lambda by a sweep over these lambdas on the selection seed (--preset paper sweeps "
        "0,1,2,5,10,20,50 with 1,000 images each); with the demo preset also pass --selection-num-images",
    )
    parser.add_argument(
        "--selection-num-images", type=image_count, default=None, metavar="N",
        help="generations per lambda of the sweep (default: the preset's; the demo preset has no sweep)",
    )
    parser.add_argument(
        "--sweep-criterion", default=None, choices=SWEEP_CRITERIA,
        help="how a lambda sweep (--preset paper or --sweep-guidance-scales) chooses SIDE's lambda: blind-groups "
        "(default, attacker-side: the most near-duplicate groups among each lambda's own generations, no training "
        "image read) or auditor-tuned (scored against --reference, the training set: an oracle step an attacker "
        "cannot take; labelled so in the report)",
    )
    parser.add_argument("--num-images", type=image_count, default=None, metavar="N", help="N_G per method")
    parser.add_argument("--seed", type=non_negative_int, default=None, help="run seed")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Run ``side demo`` with the parsed arguments; return the exit code."""
    from ..evaluation.report import candidate_table, format_table
    from ..workflows.demo import run_demo as run

    overrides = {"pipeline": args.pipeline, "reference": args.reference}
    for name in ("guidance_scale", "num_images", "seed", "scheduler", "classifier_size", "sweep_criterion", "selection_num_images"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.sweep_guidance_scales is not None:
        overrides["sweep_guidance_scales"] = tuple(args.sweep_guidance_scales)
    report = run(
        args.output,
        quick=args.quick,
        preset=args.preset,
        on_stage_done=lambda stage, seconds, path: print(f"[side] {stage} done in {seconds:.1f}s -> {path}", flush=True),
        **overrides,
    )
    print(format_table(report))
    if "candidates" in report:
        print(candidate_table(report["candidates"]))
    if "guidance_selection" in report:
        selection = report["guidance_selection"]
        print(f"SIDE lambda {selection['selected']:g}, chosen {selection['criterion']} on seed {selection['selection_seed']}")
    print(f"report: {args.output}/report.md")
    return 0
