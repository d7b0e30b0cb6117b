"""`side candidates`: rank generations as likely training images, without the training set."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..utils.arg_types import device, positive_float, positive_int
from .common import CommandError, check_device, example, summary


def add_candidates_command(subparsers) -> None:
    """Register ``side candidates`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "candidates",
        help="rank generations as likely training images without the training set (near-duplicate groups)",
        description=(
            "What an attacker holds after extraction: every generation ranked by the size and tightness of its group\n"
            "of near-duplicates among the generations (Carlini et al.'s normalized L2, computed among the generations;\n"
            "memorized images recur across seeds), near-duplicates merged. Writes candidates.parquet, candidates.json\n"
            "and candidates.png beside the generations (`side extract` does this when it finishes). `side evaluate`\n"
            "then reports precision@k and the distinct training images among the top k."
        ),
        epilog=example("side candidates --generated audit/side audit/uncond"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--generated", required=True, nargs="+", metavar="DIR", help="generation folders (side extract / synthesize)")
    parser.add_argument(
        "--output", default=None, metavar="DIR",
        help="where the list goes for a single source that is not a generation folder (default: beside the generations)",
    )
    parser.add_argument(
        "--threshold", type=positive_float, default=0.5, metavar="T",
        help="normalized L2 among the generations below which generations are near-duplicates (default: 0.5)",
    )
    parser.add_argument(
        "--max-neighbors", type=positive_int, default=256, metavar="K",
        help="neighbours retrieved per generation; groups of up to K - 50 are found whole (default: 256)",
    )
    parser.add_argument("--device", type=device, default=None, help="device for the search (default: cpu)")
    parser.set_defaults(func=run_candidates)


def run_candidates(args: argparse.Namespace) -> int:
    """Run ``side candidates`` with the parsed arguments; return the exit code."""
    from ..candidates.files import write_candidates
    from ..storage.candidate_files import candidates_dir
    from ..storage.data import check_image_source
    from ..storage.outputs import CANDIDATES, check_output_folder

    check_device(args.device)
    if args.output is not None and len(args.generated) > 1:
        raise CommandError(f"--output takes the list of one source; {len(args.generated)} were given: drop --output.")
    if args.max_neighbors < 2:
        raise CommandError(f"--max-neighbors {args.max_neighbors} must be at least 2.")
    if args.output is not None and Path(args.output).exists() and not Path(args.output).is_dir():
        raise CommandError(f"--output {args.output} is a file; choose a folder.")
    for source in args.generated:
        check_image_source(source)
        candidates_dir(source, args.output)  # refuses a non-generation folder without --output, before any work
        if args.output is not None and not (Path(source).exists() and Path(args.output).resolve() == Path(source).resolve()):
            check_output_folder(args.output, CANDIDATES, command="`side candidates`")
    for source in args.generated:
        started = time.perf_counter()
        result = write_candidates(source, args.output, args.threshold, args.max_neighbors, device=args.device)
        print_top(result)
        summary(f"candidates ({result['num_candidates']} of {result['num_generations']} generations)", started, str(candidates_dir(source, args.output)))
    return 0


def print_top(result: dict) -> None:
    """Print the head of a candidate list."""
    print(f"{result['source']}: {result['num_groups']} near-duplicate groups; top candidates (rank, row, group size, tightness):")
    for item in result["top"]:
        print(f"  #{item['rank']:<3} row {item['row']:<6} x{item['group_size']:<4} {item['tightness']:.3f}")


def candidates_after_extraction(output: str, num_generations: int) -> None:
    """The last step of ``side extract``: the blind candidate list beside the generations (skipped for < 3 images)."""
    from ..candidates.files import write_candidates
    from ..candidates.ranking import MIN_GENERATIONS
    from ..storage.candidate_files import CANDIDATES_PARQUET

    if num_generations < MIN_GENERATIONS:
        print(f"[side] candidates skipped: {num_generations} generation(s), ranking needs at least {MIN_GENERATIONS}")
        return
    started = time.perf_counter()
    result = write_candidates(output)
    summary(f"candidates ({result['num_groups']} near-duplicate groups)", started, f"{output}/{CANDIDATES_PARQUET}")
