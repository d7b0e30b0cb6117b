"""`side synthesize` and `side extract`: resumable generation runs."""

from __future__ import annotations

import argparse

from ..utils.arg_types import image_count, non_negative_float
from .common import (
    CommandError,
    add_generation_arguments,
    add_guidance_arguments,
    check_repo_id,
    command_line,
    example,
    guidance_settings,
    run_generation_step,
)


def add_synthesize_command(subparsers) -> None:
    """Register ``side synthesize`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "synthesize",
        help="SIDE step 1: sample the target without guidance (resumable)",
        description="Sample N images from the unconditional target, in resumable shards, each image from its own seed.",
        epilog=example("side synthesize --pipeline default --num-samples 2000 --output side-demo/synthetic"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--num-samples", type=image_count, required=True, metavar="N", help="number of images (N_syn)")
    add_generation_arguments(parser)
    parser.set_defaults(func=run_synthesize)


def run_synthesize(args: argparse.Namespace) -> int:
    """Run ``side synthesize`` with the parsed arguments; return the exit code."""
    from ..generation.engine import GenerationSettings

    settings = GenerationSettings(
        pipeline=args.pipeline, method="synthetic", num_images=args.num_samples, batch_size=args.batch_size,
        seed=args.seed, num_inference_steps=args.num_inference_steps, scheduler=args.scheduler,
    )
    run_generation_step("synthesize", args, settings)
    return 0


def add_extract_command(subparsers) -> None:
    """Register ``side extract`` on ``subparsers``."""
    from ..methods.registry import extraction_method_names, methods_help

    parser = subparsers.add_parser(
        "extract",
        help="SIDE step 7 and its baselines: generate extraction candidates (resumable, accelerate-aware)",
        description=(
            "Generate N candidates with one extraction method, each image from its own seed (and, when guided, toward\n"
            "its own surrogate condition). Run under `accelerate launch --num_processes P -m diffusers_side extract ...`\n"
            "to split the shards over P processes. The methods (default guidance scale):\n" + methods_help()
            + "\nEnds with the blind candidate list beside the images (candidates.parquet: see `side candidates`)."
        ),
        epilog=example("side extract --pipeline side-demo/side-pipeline --method side --num-images 1000 --guidance-scale 2 --output side-demo/side"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--method", choices=extraction_method_names(), required=True, help="extraction method (see above)")
    parser.add_argument("--num-images", type=image_count, required=True, metavar="N", help="number of candidates (N_G)")
    parser.add_argument("--guidance-scale", type=non_negative_float, default=None, metavar="L", help="lambda of a guided method (default: the method's own, listed above; for side-lora the classifier-free guidance scale)")
    parser.add_argument("--classifier", default=None, metavar="PATH", help="classifier folder replacing the pipeline's own (cond: the time-independent one)")
    add_guidance_arguments(parser)
    parser.add_argument(
        "--push-to-hub", default=None, metavar="REPO", help="upload the candidates as a private Hub data set with a card"
    )
    parser.add_argument("--public", action="store_true", help="with --push-to-hub: make the data set public (default: private)")
    add_generation_arguments(parser)
    parser.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    """Run ``side extract`` with the parsed arguments; return the exit code."""
    from ..generation.engine import GenerationSettings
    from ..methods.registry import get_method

    guidance_scale = get_method(args.method).resolve_guidance_scale(args.guidance_scale)
    if args.public and not args.push_to_hub:
        raise CommandError("--public only applies to --push-to-hub REPO; add --push-to-hub or drop --public.")
    if args.push_to_hub:
        check_repo_id(args.push_to_hub, "--push-to-hub")
    settings = GenerationSettings(
        pipeline=args.pipeline, method=args.method, num_images=args.num_images, batch_size=args.batch_size,
        seed=args.seed, num_inference_steps=args.num_inference_steps, guidance_scale=guidance_scale,
        scheduler=args.scheduler, classifier=args.classifier, **guidance_settings(args),
    )
    if args.push_to_hub:  # every local check first, then the repo: an offline push fails before the work
        from ..generation.preflight import check_generation
        from ..generation.settings import check_output_dir
        from ..storage.hub import create_repo_early

        settings.validate()
        check_output_dir(args.output, settings)
        check_generation(settings)
        create_repo_early(args.push_to_hub, "--push-to-hub", private=not args.public, repo_type="dataset")
    dataset = run_generation_step("extract", args, settings)
    if dataset is not None:
        from .candidates import candidates_after_extraction

        candidates_after_extraction(args.output, len(dataset))
    if dataset is not None and args.push_to_hub:
        from ..generation.hub import push_extraction

        private = not args.public
        print(f"pushed to {push_extraction(dataset, settings, args.push_to_hub, command_line(), private=private)}")
    return 0
