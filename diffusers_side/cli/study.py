"""`side study`: compare extraction settings on one protocol, through the engine of `side extract`."""

from __future__ import annotations

import argparse
import time

from .common import example, summary

CONFIG_EXAMPLE = """config (JSON):
  {"pipeline": "digits-rare", "reference": "digits-rare",
   "inputs": {"num_synthetic": 1000, "scheduler": "ddpm"},
   "selection": {"seed": 1, "num_images": 500}, "report": {"seed": 2, "num_images": 5000},
   "configurations": [{"name": "uncond", "method": "uncond", "scheduler": "ddpm"},
                      {"name": "exemplar", "method": "side-exemplar", "scheduler": "ddpm", "guidance_scale": 10}]}
"""


def add_study_command(subparsers) -> None:
    """Register ``side study`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "study",
        help="compare extraction settings: equal N_G and equal budget, 95 %% intervals, every image regenerable by side extract",
        description=(
            "Run one phase (selection or report, on different seeds) of the study CONFIG describes: build the attacker's\n"
            "inputs once (synthesis, labels, classifiers; each stage's CPU seconds and UNet evaluations recorded), generate\n"
            "every configuration with the engine of `side extract` (the command of each folder is in study.md), rank its\n"
            "blind candidates, give plain sampling the budget each guided configuration spent, evaluate everything and\n"
            "write PHASE/study.json and PHASE/study.md into --output (AMS with Wilson intervals, distinct training images\n"
            "with bootstrap intervals, at equal N_G and at equal budget). Re-running resumes."
        ),
        epilog=CONFIG_EXAMPLE + example("side study study.json --phase selection --output runs/study"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG", help="the study config (JSON; see below)")
    parser.add_argument(
        "--phase", required=True, choices=("selection", "report"),
        help="selection: the seed settings are chosen on; report: the seed the numbers are published from",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="the study folder (the same one to resume or run the other phase)")
    parser.set_defaults(func=run_study)


def run_study(args: argparse.Namespace) -> int:
    """Run ``side study`` with the parsed arguments; return the exit code."""
    from ..workflows.study import run_study as run
    from ..workflows.study_config import load_study_config
    from ..workflows.study_report import STUDY_MD

    started = time.perf_counter()
    results = run(load_study_config(args.config), args.output, args.phase)
    for name, row in results["configurations"].items():
        distinct = ", ".join(f"{band} {row['distinct'][band][0]:.0f}" for band in reversed(results["counted_bands"]))
        print(f"{name}: N_G {row['num_images']}, distinct training images {distinct}")
    summary(f"study ({args.phase})", started, f"{args.output}/{args.phase}/{STUDY_MD}")
    return 0
