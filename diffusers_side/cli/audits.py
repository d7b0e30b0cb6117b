"""`side divergence` and `side query-only`: the paper's model-level memorization score and its query-only attack."""

from __future__ import annotations

import argparse
import time

from ..storage.embedded import EMBEDDED_CHOICES
from ..utils.arg_types import device, image_count, non_negative_int, positive_float, positive_int
from .common import CommandError, check_device, example, summary

PIPELINE_HELP = f"pipeline to audit: a folder, a Hub repo id or an embedded model ({EMBEDDED_CHOICES}; default: default)"


def add_run_arguments(parser: argparse.ArgumentParser, outputs: str, run) -> None:
    """The flags both audits share (--seed, --device, --output) and the function that runs the command."""
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seeds every random draw (default: 0)")
    parser.add_argument("--device", type=device, default=None, help="device (default: cpu)")
    parser.add_argument("--output", required=True, metavar="DIR", help=f"where {outputs} go")
    parser.set_defaults(func=run)


def add_divergence_command(subparsers) -> None:
    """Register ``side divergence`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "divergence",
        help="the memorization divergence M = KL(q_eps || p_theta) of a model on its training set (SIDE, Def. 1)",
        description=(
            "Estimate M(D; p_theta, eps) = KL(q_eps || p_theta): q_eps is a mixture of N(x_i, eps^2 I) over the training\n"
            "images, log p_theta comes from the probability-flow ODE with a Hutchinson trace estimator. Reported with a\n"
            "95 % interval, and with --holdout the same on unseen images and the gap (a larger gap: more memorization).\n"
            "A model-level number an owner can compare across checkpoints (docs/divergence.md)."
        ),
        epilog=example("side divergence --pipeline digits-rare --reference digits-rare --holdout embedded --output runs/div"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pipeline", default="default", metavar="PATH_OR_REPO", help=PIPELINE_HELP)
    parser.add_argument("--reference", required=True, metavar="SOURCE", help="the training set D (any image source side evaluate reads)")
    parser.add_argument(
        "--holdout", default=None, metavar="SOURCE",
        help="unseen images of the same distribution (at least as many as D), or 'embedded' for an embedded model's unseen digits",
    )
    parser.add_argument("--eps", type=positive_float, default=None, help="mixture standard deviation, [-1, 1] pixels (default: sigma_min)")
    parser.add_argument("--num-samples", type=positive_int, default=200, help="Monte Carlo draws per image set (default: 200)")
    parser.add_argument("--num-probes", type=positive_int, default=1, help="Rademacher probes per draw (default: 1)")
    parser.add_argument("--batch-size", type=positive_int, default=50, help="images per ODE solve (default: 50)")
    parser.add_argument("--rtol", type=positive_float, default=None, help="ODE solver relative tolerance (default: the library's)")
    parser.add_argument("--atol", type=positive_float, default=None, help="ODE solver absolute tolerance (default: the library's)")
    add_run_arguments(parser, "divergence.json and report.md", run_divergence)


def run_divergence(args: argparse.Namespace) -> int:
    """Run ``side divergence``; every input is checked before the model loads."""
    from ..pipelines.target import target_kind
    from ..storage.data import check_image_source
    from ..storage.outputs import DIVERGENCE, check_output_folder
    from ..storage.sources import ModelSource

    check_device(args.device)
    source = ModelSource.parse(args.pipeline, what="--pipeline")
    target_kind(source, what="--pipeline")  # refuses a LoRA-SIDE result by naming its base, before any weight loads
    check_image_source(args.reference)
    if args.holdout == "embedded":
        if source.kind != "embedded":
            raise CommandError(f"--holdout embedded takes an embedded model's unseen digits; --pipeline {args.pipeline} is not one.")
    elif args.holdout is not None:
        check_image_source(args.holdout)
    check_output_folder(args.output, DIVERGENCE, command="side divergence")
    started = time.perf_counter()

    from ..audits.divergence import embedded_holdout, memorization_divergence
    from ..audits.reports import write_divergence
    from ..pipelines.loading import load_pipeline
    from ..storage.data import find_image_column, load_image_dataset

    pipe = load_pipeline(args.pipeline, device=args.device)
    reference = load_image_dataset(args.reference)
    holdout = None
    if args.holdout == "embedded":
        holdout = embedded_holdout(source.location)
    elif args.holdout is not None:
        holdout_set = load_image_dataset(args.holdout)
        holdout = holdout_set[find_image_column(holdout_set)]
    result = memorization_divergence(
        pipe, reference[find_image_column(reference)], holdout, eps=args.eps, num_samples=args.num_samples,
        seed=args.seed, batch_size=args.batch_size, num_probes=args.num_probes,
        **{key: getattr(args, key) for key in ("rtol", "atol") if getattr(args, key) is not None},
    )
    settings = {key: getattr(args, key) for key in ("pipeline", "reference", "holdout", "eps", "num_samples", "num_probes", "batch_size", "rtol", "atol", "seed")}
    write_divergence(result, args.output, settings)
    print(result.describe())
    summary("divergence", started, args.output)
    return 0


def add_query_only_command(subparsers) -> None:
    """Register ``side query-only`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "query-only",
        help="SIDE through a generation API only: search initial noises with the surrogate classifier (CMA-ES)",
        description=(
            "Query-only SIDE (paper App. E): the model is a black box (initial noise in, image out, no gradient read).\n"
            "For each surrogate condition, CMA-ES (the `cma` package) searches initial noises whose images the\n"
            "surrogate classifier assigns to it, with exactly --queries images in all. Writes every queried image with\n"
            "its target and fitness (images/, for side evaluate --generated), query_only.json and report.md."
        ),
        epilog=example("side query-only --pipeline digits-rare --classifier run/classifier-side --queries 400 --output runs/qo"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pipeline", default="default", metavar="PATH_OR_REPO", help=PIPELINE_HELP)
    parser.add_argument("--classifier", required=True, metavar="DIR", help="the surrogate classifier (side train-classifier output)")
    parser.add_argument("--queries", type=image_count, required=True, metavar="Q", help="total images generated (the budget)")
    parser.add_argument(
        "--num-targets", type=positive_int, default=None, metavar="N",
        help="search the first N surrogate conditions (default: all, at most one per query)",
    )
    parser.add_argument("--num-best", type=positive_int, default=1, help="best queries per target marked 'best' (default: 1)")
    parser.add_argument("--popsize", type=positive_int, default=None, help="CMA-ES population (default: 4 + 3 ln d)")
    parser.add_argument("--sigma0", type=positive_float, default=1.0, help="CMA-ES initial step size (1: plain sampling first)")
    parser.add_argument("--num-inference-steps", type=positive_int, default=None, help="denoising steps (default: the pipeline's)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per pipeline call (default: 64)")
    add_run_arguments(parser, "images/, query_only.json and report.md", run_query_only)


def run_query_only(args: argparse.Namespace) -> int:
    """Run ``side query-only``; inputs are checked before the model loads."""
    from pathlib import Path

    from ..pipelines.target import target_kind
    from ..storage.outputs import QUERY_ONLY, check_output_folder
    from ..storage.sources import ModelSource

    check_device(args.device)
    target_kind(ModelSource.parse(args.pipeline, what="--pipeline"), what="--pipeline")
    if not Path(args.classifier).is_dir():
        raise CommandError(f"--classifier {args.classifier} is not a folder; pass the output of side train-classifier.")
    check_output_folder(args.output, QUERY_ONLY, command="side query-only")
    started = time.perf_counter()

    from ..audits.query_only import ClassifierFitness, PipelineBlackBox, query_only_search
    from ..audits.reports import write_query_only
    from ..pipelines.loading import load_classifier, load_pipeline

    fitness = ClassifierFitness(load_classifier(args.classifier))
    generate = PipelineBlackBox(
        load_pipeline(args.pipeline, device=args.device), num_inference_steps=args.num_inference_steps,
        batch_size=args.batch_size, seed=args.seed,
    )
    if fitness.image_shape != generate.noise_shape:
        raise CommandError(
            f"--classifier {args.classifier} reads {fitness.image_shape} images but --pipeline {args.pipeline} makes "
            f"{generate.noise_shape}; train the classifier on this pipeline's synthetic set."
        )
    num_targets = min(args.num_targets or fitness.num_conditions, fitness.num_conditions, args.queries)
    result = query_only_search(
        generate, fitness, list(range(num_targets)), args.queries, generate.noise_shape, popsize=args.popsize,
        sigma0=args.sigma0, seed=args.seed, num_best=args.num_best,
    )
    settings = {key: getattr(args, key) for key in ("pipeline", "classifier", "queries", "num_best", "popsize", "sigma0", "num_inference_steps", "seed")}
    write_query_only(result, args.output, {**settings, "num_targets": num_targets})
    summary(f"query-only ({result.num_queries} queries, {num_targets} targets)", started, args.output)
    return 0
