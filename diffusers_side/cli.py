"""The `side` command line: one subcommand per step of a SIDE audit.

Every subcommand validates its arguments before the expensive work, prints a one-line summary per
finished step (time and output path) and exits non-zero with a one-line error on bad input (the
traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import sys
import time


class CommandError(Exception):
    """Bad input detected by the CLI itself."""


USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, CommandError)


def summary(step: str, started: float, output: str) -> None:
    """Print the one-line summary of a finished step."""
    print(f"[side] {step} done in {time.perf_counter() - started:.1f}s -> {output}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="side",
        description="SIDE: extract training images from an unconditional diffusion model, to audit it for memorization.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def _example(text: str) -> str:
    return f"example:\n  {text}"


# Each `add_*` registers one subcommand and sets `func` to the function that runs it.
COMMANDS: list = []


def _cohesion_threshold(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number such as 0.5, got {value!r}") from None


def add_label_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "label",
        help="turn synthetic images into surrogate labels (embed, cluster, filter by cohesion, relabel)",
        description=(
            "SIDE steps 2-5: embed the synthetic images, cluster them with KMeans, keep the clusters whose\n"
            "cohesion (mean cosine of members to the centroid, on centred features) is >= TAU, and label\n"
            "every image by its nearest kept centroid. Writes a datasets directory (image, label, distance,\n"
            "seed), the surrogate_labels.json/.safetensors sidecar and contact_sheet.png."
        ),
        epilog=_example("side label --synthetic side-demo/synthetic --clusters 100 --cohesion auto --output side-demo/labels"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--synthetic", required=True, metavar="DIR", help="output directory of `side synthesize`")
    parser.add_argument("--output", required=True, metavar="DIR", help="new (or earlier `side label`) output directory")
    parser.add_argument("--clusters", type=int, default=100, metavar="K", help="KMeans clusters (default: 100, as the paper)")
    parser.add_argument(
        "--cohesion",
        type=_cohesion_threshold,
        default="auto",
        metavar="TAU",
        help="keep clusters with cohesion >= TAU (the paper uses 0.5 with SSCD), or 'auto' (default): Otsu's split "
        "between tight and diffuse clusters, since cosine scales differ between feature extractors",
    )
    parser.add_argument(
        "--features",
        default="unet",
        metavar="unet|pixels|MODEL|FILE.pt",
        help="feature extractor: the target's own UNet (default), raw pixels, a transformers model id or folder "
        "(CLIP, DINOv2), or a TorchScript file such as SSCD",
    )
    parser.add_argument("--pipeline", default=None, help="target pipeline for --features unet (default: from DIR/generation.json)")
    parser.add_argument("--seed", type=int, default=0, help="KMeans seed (default: 0)")
    parser.add_argument("--batch-size", type=int, default=256, help="embedding batch size (default: 256)")
    parser.add_argument("--min-cluster-size", type=int, default=2, help="never keep smaller clusters (default: 2)")
    parser.add_argument("--device", default=None, help="device for the feature extractor (default: cpu)")
    parser.set_defaults(func=run_label)


def run_label(args: argparse.Namespace) -> int:
    from .surrogate_labels import CONTACT_SHEET, format_label_table, label_synthetic

    started = time.perf_counter()
    _, labels = label_synthetic(
        args.synthetic,
        args.output,
        num_clusters=args.clusters,
        cohesion=args.cohesion,
        features=args.features,
        seed=args.seed,
        batch_size=args.batch_size,
        pipeline=args.pipeline,
        min_cluster_size=args.min_cluster_size,
        device=args.device,
    )
    print(format_label_table(labels))
    print(f"contact sheet: {args.output}/{CONTACT_SHEET}")
    summary("label", started, args.output)
    return 0


COMMANDS.append(add_label_command)


def add_evaluate_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score generated images against the training set (AMS, UMS, memorization ratio) and write the report",
        description=(
            "SIDE step 8: find every generation's best training match (chunked search, bounded memory), count\n"
            "AMS/UMS per similarity band for each method, the 95th-percentile similarity and Gu et al.'s\n"
            "memorization ratio, and write report.json, report.md, matches.parquet and figures/ into --output."
        ),
        epilog=_example(
            "side evaluate --generated side-demo/side side-demo/uncond side-demo/cond --reference default "
            "--output side-demo/eval --similarity carlini --bands high:0:0.3333,mid:0.3333:0.5,low:0.5:0.6667"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--generated", required=True, nargs="+", metavar="DIR", help="generation folders (side extract / synthesize)")
    parser.add_argument("--reference", required=True, metavar="DATASET", help="training set: 'default', a folder or a Hub data set id")
    parser.add_argument("--output", required=True, metavar="DIR", help="where the report, matches and figures go")
    parser.add_argument(
        "--similarity",
        default="carlini",
        metavar="l2|carlini|EXTRACTOR",
        help="'carlini' (normalized L2, default), 'l2' (RMS L2 on pixels), or a feature extractor compared by cosine: "
        "unet, pixels, a transformers model id or folder (CLIP, DINOv2), or a TorchScript file such as SSCD",
    )
    parser.add_argument(
        "--bands",
        default=None,
        metavar="NAME:LO:HI,...",
        help="similarity bands, sorted by edges and non-overlapping (default: documented per similarity and written into the report)",
    )
    parser.add_argument("--resolution", type=int, default=None, metavar="R", help="resize generated and reference images to RxR")
    parser.add_argument("--channels", type=int, default=None, choices=(1, 3), help="convert generated and reference images to 1 or 3 channels")
    parser.add_argument("--chunk-size", type=int, default=1024, metavar="C", help="rows per chunk of the nearest-match search (default: 1024)")
    parser.add_argument("--batch-size", type=int, default=256, help="images decoded or embedded at once (default: 256)")
    parser.add_argument("--pipeline", default=None, help="audited pipeline for --similarity unet (default: from DIR/generation.json)")
    parser.add_argument("--device", default=None, help="device for the search and the extractor (default: cuda if available, else cpu)")
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate
    from .report import REPORT_MD, format_table

    started = time.perf_counter()
    report = evaluate(
        args.generated,
        args.reference,
        args.output,
        similarity=args.similarity,
        bands=args.bands,
        resolution=args.resolution,
        channels=args.channels,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        device=args.device,
        pipeline=args.pipeline,
    )
    print(format_table(report))
    summary("evaluate", started, f"{args.output}/{REPORT_MD}")
    return 0


COMMANDS.append(add_evaluate_command)


# --- generation: synthesize and extract --------------------------------------------------------------


def _add_generation_arguments(parser: argparse.ArgumentParser, default_batch: int = 64) -> None:
    parser.add_argument("--pipeline", default="default", metavar="PATH_OR_REPO", help="pipeline to audit (default: the embedded digits model)")
    parser.add_argument("--output", required=True, metavar="DIR", help="new output directory, or the same one to resume")
    parser.add_argument("--batch-size", type=int, default=default_batch, help=f"images per shard (default: {default_batch})")
    parser.add_argument("--seed", type=int, default=0, help="run seed; image i uses a seed derived from (seed, i) (default: 0)")
    parser.add_argument("--num-inference-steps", type=int, default=50, help="denoising steps (default: 50)")
    parser.add_argument("--scheduler", default=None, help="sample with another scheduler: ddpm, ddim, euler, euler-ancestral, dpm-solver, unipc")
    parser.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin weights (only for checkpoints you trust)")


def add_synthesize_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "synthesize",
        help="SIDE step 1: sample the target without guidance (resumable)",
        description="Sample N images from the unconditional target, in resumable shards, each image from its own seed.",
        epilog=_example("side synthesize --pipeline default --num-samples 2000 --output side-demo/synthetic"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--num-samples", type=int, required=True, metavar="N", help="number of images (N_syn)")
    _add_generation_arguments(parser)
    parser.set_defaults(func=run_synthesize)


def run_synthesize(args: argparse.Namespace) -> int:
    from .generation import GenerationSettings

    settings = GenerationSettings(
        pipeline=args.pipeline, method="synthetic", num_images=args.num_samples, batch_size=args.batch_size,
        seed=args.seed, num_inference_steps=args.num_inference_steps, scheduler=args.scheduler,
    )
    _run_generation("synthesize", args, settings)
    return 0


def add_extract_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="SIDE step 7 and its baselines: generate extraction candidates (resumable, accelerate-aware)",
        description=(
            "Generate N candidates with SIDE (time-dependent classifier guidance toward one surrogate condition per\n"
            "image), Carlini UnCond (plain sampling) or Carlini Cond (a time-independent classifier). Run under\n"
            "`accelerate launch --num_processes P -m diffusers_side extract ...` to split the shards over P processes."
        ),
        epilog=_example("side extract --pipeline side-demo/side-pipeline --method side --num-images 1000 --guidance-scale 2 --output side-demo/side"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--method", choices=("side", "uncond", "cond"), required=True, help="extraction method")
    parser.add_argument("--num-images", type=int, required=True, metavar="N", help="number of candidates (N_G)")
    parser.add_argument("--guidance-scale", type=float, default=None, metavar="L", help="lambda for side/cond (default: 1.0, the Bayes-exact conditional score)")
    parser.add_argument("--classifier", default=None, metavar="PATH", help="classifier folder replacing the pipeline's own (cond: the time-independent one)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the candidates as a Hub data set with a card")
    _add_generation_arguments(parser)
    parser.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    from .generation import GenerationSettings

    guidance_scale = 0.0 if args.method == "uncond" else (1.0 if args.guidance_scale is None else args.guidance_scale)
    if args.method == "uncond" and args.guidance_scale:
        raise CommandError(f"--method uncond samples without guidance; drop --guidance-scale {args.guidance_scale}.")
    settings = GenerationSettings(
        pipeline=args.pipeline, method=args.method, num_images=args.num_images, batch_size=args.batch_size,
        seed=args.seed, num_inference_steps=args.num_inference_steps, guidance_scale=guidance_scale,
        scheduler=args.scheduler, classifier=args.classifier,
    )
    dataset = _run_generation("extract", args, settings)
    if dataset is not None and args.push_to_hub:
        from .hub import push_extraction

        print(f"pushed to {push_extraction(dataset, settings, args.push_to_hub, _command_line())}")
    return 0


def _run_generation(step: str, args: argparse.Namespace, settings):
    """Load the pipeline, generate (split over accelerate processes), summarise on the main process."""
    from accelerate import Accelerator

    from .generation import generate
    from .loading import load_pipeline

    started = time.perf_counter()
    accelerator = Accelerator()
    settings.validate(accelerator.num_processes)
    pipe = load_pipeline(settings.pipeline, settings.scheduler, settings.classifier, args.allow_pickle, accelerator.device)
    dataset = generate(pipe, args.output, settings, accelerator)
    if accelerator.is_main_process:
        summary(f"{step} ({len(dataset)} {settings.method} images)", started, args.output)
        return dataset
    return None


def _command_line() -> str:
    return " ".join(["side", *sys.argv[1:]])


COMMANDS.extend([add_synthesize_command, add_extract_command])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"side {args.command}: error: {error}", file=sys.stderr)
        return 2
