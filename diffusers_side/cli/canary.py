"""`side canary make` / `side canary audit`: a canary audit of text-to-image fine-tuning (Extended SIDE, paper App. F)."""

from __future__ import annotations

import argparse
import time

from ..utils.arg_types import image_count, non_negative_float, non_negative_int, positive_int
from .common import example, summary


def add_canary_command(subparsers) -> None:
    """Register ``side canary make`` and ``side canary audit`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "canary",
        help="canary audit of text-to-image fine-tuning: make trigger/image canaries, then count how many a fine-tuned model returns",
        description=(
            "Extended SIDE as a canary audit. `side canary make` writes N canaries (random non-word triggers paired with\n"
            "images) as an imagefolder to mix into a fine-tuning set, and a private key (canary_key.json, refused by\n"
            "`side push`). After fine-tuning, `side canary audit` queries the model with each trigger and with fresh\n"
            "triggers never inserted (controls), and reports the canaries extracted per similarity band beside the\n"
            "controls' false-positive rate."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="canary_command", required=True, metavar="ACTION")
    make = actions.add_parser(
        "make", help="write N canaries (imagefolder + metadata.jsonl) and their private key",
        epilog=example("side canary make --num-canaries 50 --output canaries  # then mix canaries/images into the training set"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    make.add_argument("--num-canaries", type=image_count, required=True, metavar="N", help="number of canaries")
    make.add_argument("--output", required=True, metavar="DIR", help="new folder: DIR/images (to mix in) and DIR/canary_key.json (private)")
    make.add_argument("--images", default=None, metavar="FOLDER", help="use the first N images of this folder / data set (default: drawn random grid patterns)")
    make.add_argument("--trigger-length", type=positive_int, default=8, metavar="L", help="trigger length (default: 8)")
    make.add_argument("--alphabet", default="bcdfghjklmnpqrstvwxz", help="trigger characters (default: the 20 lowercase consonants)")
    make.add_argument("--resolution", type=positive_int, default=64, metavar="R", help="canary image size RxR (default: 64)")
    make.add_argument("--channels", type=int, default=3, choices=(1, 3), help="canary image channels (default: 3)")
    make.add_argument("--seed", type=non_negative_int, default=0, help="seeds the triggers and drawn images (default: 0)")
    make.set_defaults(func=run_make, command_name="canary make")

    audit = actions.add_parser(
        "audit", help="query a fine-tuned text-to-image pipeline with every trigger and with controls; write the report",
        epilog=example("side canary audit --pipeline my-finetuned-sd --canaries canaries --images-per-trigger 4 --output canary-audit"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument("--pipeline", required=True, metavar="PATH_OR_REPO", help="the fine-tuned text-to-image pipeline (folder or Hub id)")
    audit.add_argument("--canaries", required=True, metavar="DIR", help="the output of `side canary make` (key + images)")
    audit.add_argument("--output", required=True, metavar="DIR", help="where report.json, report.md and figures/ go")
    audit.add_argument("--num-controls", type=image_count, default=None, metavar="M", help="fresh never-inserted triggers (default: as many as canaries)")
    audit.add_argument("--images-per-trigger", type=image_count, default=1, metavar="K", help="images per trigger; the best one is scored (default: 1)")
    audit.add_argument("--similarity", default="carlini", choices=("carlini", "l2"), help="normalized L2 over the canaries (default) or RMS L2")
    audit.add_argument("--bands", default=None, metavar="NAME:LO:HI,...", help="similarity bands (default: the project's for the similarity)")
    audit.add_argument("--num-inference-steps", type=positive_int, default=50, help="denoising steps (default: 50)")
    audit.add_argument("--guidance-scale", type=non_negative_float, default=7.5, help="the pipeline's guidance scale (default: 7.5)")
    audit.add_argument("--batch-size", type=positive_int, default=16, help="prompts per pipeline call (default: 16)")
    audit.add_argument("--seed", type=non_negative_int, default=0, help="seeds the controls and every query (default: 0)")
    audit.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin weights (only for checkpoints you trust)")
    audit.set_defaults(func=run_audit, command_name="canary audit")


def run_make(args: argparse.Namespace) -> int:
    """Run ``side canary make``."""
    from ..audits.canary import IMAGES_DIR, KEY_FILE, make_canaries

    started = time.perf_counter()
    make_canaries(
        args.output, args.num_canaries, images=args.images, trigger_length=args.trigger_length, alphabet=args.alphabet,
        resolution=args.resolution, channels=args.channels, seed=args.seed,
    )
    print(f"mix {args.output}/{IMAGES_DIR} into the fine-tuning set; keep {args.output}/{KEY_FILE} private (side push refuses it)")
    summary(f"canary make ({args.num_canaries} canaries)", started, args.output)
    return 0


def run_audit(args: argparse.Namespace) -> int:
    """Run ``side canary audit``."""
    from ..audits.canary_audit import REPORT_MD, run_canary_audit

    started = time.perf_counter()
    report = run_canary_audit(
        args.pipeline, args.canaries, args.output, num_controls=args.num_controls, images_per_trigger=args.images_per_trigger,
        similarity=args.similarity, bands=args.bands, num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale, batch_size=args.batch_size, seed=args.seed, allow_pickle=args.allow_pickle,
    )
    rate, _, _, count = report["extracted"]["any band"]
    fp_rate, _, _, fp_count = report["controls_paired"]["any band"]
    print(f"canaries extracted (any band): {count}/{report['num_canaries']} ({100 * rate:.1f} %); "
          f"controls: {fp_count}/{report['num_controls']} ({100 * fp_rate:.1f} %)")
    summary("canary audit", started, f"{args.output}/{REPORT_MD}")
    return 0
