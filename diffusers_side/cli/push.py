"""`side push`: upload a pipeline folder or a set of candidates."""

from __future__ import annotations

import argparse
import time

from .common import CommandError, check_repo_id, command_line, example, summary


def add_push_command(subparsers) -> None:
    """Register ``side push`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "push",
        help="upload a pipeline folder (with its model card) or extraction candidates to the Hub",
        description=(
            "Upload a folder written by the training scripts or by `side extract` to the Hugging Face Hub. Extraction\n"
            "candidates (which may reproduce private training images) go to a private data set unless --public is given."
        ),
        epilog=example("side push side-demo/classifier-side --repo your-name/side-digits-audit"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="a pipeline folder (model_index.json) or an extraction folder (generation.json)")
    parser.add_argument("--repo", required=True, help="Hub repo id, e.g. your-name/side-digits-audit")
    parser.add_argument("--private", action="store_true", help="create a pipeline's model repo as private (extraction data sets are private by default)")
    parser.add_argument("--public", action="store_true", help="make an extraction data set, or a folder pushed with --include-training-matches, public (default: private)")
    parser.add_argument(
        "--include-training-matches", action="store_true",
        help="upload a folder that holds `side evaluate` output (matches.parquet, figures of generated images beside the "
        "training images they copy); refused without this flag, and private unless --public",
    )
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    parser.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    """Run ``side push`` with the parsed arguments; return the exit code."""
    from ..workflows.runs import push

    started = time.perf_counter()
    check_repo_id(args.repo, "--repo")
    if args.private and args.public:
        raise CommandError("--private and --public contradict each other; pass one of them.")
    push(
        args.folder, args.repo, command_line(), token=args.token, private=args.private, public=args.public,
        include_training_matches=args.include_training_matches,
    )
    summary("push", started, f"https://huggingface.co/{args.repo}")
    return 0
