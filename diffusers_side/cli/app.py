"""The `side` command line: one subcommand per step of a SIDE audit.

Every subcommand validates its arguments before the expensive work, prints a one-line summary per
finished step (time and output path) and exits non-zero with a one-line error on bad input (the
traceback only with ``--debug``). A new subcommand is one module with its ``add_*_command`` and one line
in [`COMMANDS`].
"""

from __future__ import annotations

import argparse
import sys

from ..utils.arg_types import OneLineErrorParser
from . import audits, canary, candidates, demo, evaluate, generate, label, push, study, sweep, train
from .common import USER_ERRORS

# The subcommands, in the order `side --help` lists them: each function registers one on the subparsers and sets
# `func` to the function that runs it.
COMMANDS = (
    generate.add_synthesize_command,
    label.add_label_command,
    train.add_train_classifier_command,
    train.add_train_lora_command,
    generate.add_extract_command,
    candidates.add_candidates_command,
    evaluate.add_evaluate_command,
    sweep.add_sweep_command,
    study.add_study_command,
    demo.add_demo_command,
    audits.add_divergence_command,
    audits.add_query_only_command,
    canary.add_canary_command,
    push.add_push_command,
)


def build_parser() -> argparse.ArgumentParser:
    """The `side` parser with one subcommand per audit step."""
    parser = OneLineErrorParser(
        prog="side",
        description="SIDE: extract training images from an unconditional diffusion model, to audit it for memorization.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``side ARGV``; bad input prints a one-line error and returns 2 (the traceback only with ``--debug``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"side {getattr(args, 'command_name', args.command)}: error: {message}", file=sys.stderr)
        return 2
