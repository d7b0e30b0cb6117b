"""`side evaluate`: score generations against a reference set."""

from __future__ import annotations

import argparse
import time

from ..storage.embedded import EMBEDDED_CHOICES
from ..utils.arg_types import (
    device,
    positive_int,
)
from .common import CommandError, check_device, example, summary


def add_evaluate_command(subparsers) -> None:
    """Register ``side evaluate`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score generated images against the training set (AMS, UMS, memorization ratio) and write the report",
        description=(
            "SIDE step 8: find every generation's best training match (chunked search, bounded memory), count\n"
            "AMS/UMS per similarity band for each method, the 95th-percentile similarity and Gu et al.'s\n"
            "memorization ratio, and write report.json, report.md, matches.parquet and figures/ into --output."
        ),
        epilog=example(
            "side evaluate --generated side-demo/side side-demo/uncond side-demo/cond --reference default "
            "--output side-demo/eval --similarity carlini --bands high:0:0.3333,mid:0.3333:0.5,low:0.5:0.6667"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--generated", required=True, nargs="+", metavar="DIR", help="generation folders (side extract / synthesize)")
    parser.add_argument("--reference", required=True, metavar="DATASET", help=f"training set: an embedded model's ({EMBEDDED_CHOICES}), a folder or a Hub data set id")
    parser.add_argument("--output", required=True, metavar="DIR", help="where the report, matches and figures go")
    parser.add_argument(
        "--similarity",
        default="carlini",
        metavar="l2|carlini|EXTRACTOR",
        help="'carlini' (normalized L2, default), 'l2' (RMS L2 on pixels), or a feature extractor compared by cosine: "
        "unet, pixels, a transformers model id or folder (CLIP, DINOv2), or a TorchScript file such as SSCD (its code runs: pass only files you trust)",
    )
    parser.add_argument(
        "--bands",
        default=None,
        metavar="NAME:LO:HI,...",
        help="similarity bands, sorted by edges and non-overlapping (default: documented per similarity and written into the report)",
    )
    parser.add_argument("--resolution", type=positive_int, default=None, metavar="R", help="resize generated and reference images to RxR")
    parser.add_argument("--channels", type=int, default=None, choices=(1, 3), help="convert generated and reference images to 1 or 3 channels")
    parser.add_argument("--chunk-size", type=positive_int, default=1024, metavar="C", help="rows per chunk of the nearest-match search (default: 1024)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images decoded or embedded at once (default: 256)")
    parser.add_argument("--pipeline", default=None, help="audited pipeline for --similarity unet (default: from DIR/generation.json)")
    parser.add_argument("--device", type=device, default=None, help="device for the search and the extractor (default: cuda if available, else cpu)")
    parser.add_argument(
        "--ums",
        default="best",
        choices=("best", "pairs"),
        help="how UMS counts a training image as extracted in a band: 'best' (default), as the best match of a generation "
        "in the band (UMS <= AMS); 'pairs', in the band of any generation, every pair counting (the paper's Eqs. 8-9)",
    )
    parser.set_defaults(func=run_evaluate)


def similarity_arguments(value: str) -> dict:
    """Map ``--similarity l2|carlini|EXTRACTOR`` to `evaluate`'s ``similarity`` or ``feature_extractor``.

    A value one typo away from a similarity name (``carlni``) is refused instead of being looked up as a model.
    """
    import difflib

    from ..similarity.registry import pixel_similarity_names, similarity_names

    pixel, names = pixel_similarity_names(), similarity_names()
    if value in pixel:
        return {"similarity": value}
    if value in names:
        raise CommandError(
            f"--similarity {value}: name the feature extractor whose embeddings are compared instead "
            "(unet, pixels, a transformers model id or folder, or a TorchScript file)."
        )
    close = difflib.get_close_matches(value, names, n=1, cutoff=0.8)
    if close:
        raise CommandError(
            f"--similarity {value!r} is not one of {pixel} nor a feature extractor; did you mean {close[0]!r}?"
        )
    return {"feature_extractor": value}


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``side evaluate`` with the parsed arguments; return the exit code."""
    from ..evaluation.evaluate import evaluate
    from ..evaluation.report import REPORT_MD, candidate_table, format_table

    check_device(args.device)
    started = time.perf_counter()
    report = evaluate(
        args.generated,
        args.reference,
        args.output,
        **similarity_arguments(args.similarity),
        bands=args.bands,
        resolution=args.resolution,
        channels=args.channels,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        device=args.device,
        pipeline=args.pipeline,
        ums=args.ums,
    )
    print(format_table(report))
    if "candidates" in report:
        print(candidate_table(report["candidates"]))
    summary("evaluate", started, f"{args.output}/{REPORT_MD}")
    return 0
