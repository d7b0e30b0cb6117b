"""The `side` command line: one subcommand per step of a SIDE audit.

Every subcommand validates its arguments before the expensive work, prints a one-line summary per
finished step (time and output path) and exits non-zero with a one-line error on bad input (the
traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..storage.embedded import EMBEDDED_CHOICES
from ..utils.arg_types import (
    GUIDANCE_SPACES,
    SCHEDULER_NAMES,
    OneLineErrorParser,
    device,
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_int,
    target_selection,
    timestep_window,
)


class CommandError(Exception):
    """Bad input detected by the CLI itself."""


# OSError covers missing or corrupt files, a file given for a folder, and the Hub being unreachable (ConnectionError).
USER_ERRORS = (ValueError, TypeError, OSError, CommandError)


def summary(step: str, started: float, output: str) -> None:
    """Print the one-line summary of a finished step."""
    print(f"[side] {step} done in {time.perf_counter() - started:.1f}s -> {output}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The `side` parser with one subcommand per audit step."""
    parser = OneLineErrorParser(
        prog="side",
        description="SIDE: extract training images from an unconditional diffusion model, to audit it for memorization.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (
        add_synthesize_command,
        add_label_command,
        add_train_classifier_command,
        add_train_lora_command,
        add_extract_command,
        add_evaluate_command,
        add_sweep_command,
        add_demo_command,
        add_push_command,
    ):  # each registers one subcommand and sets `func` to the function that runs it
        add_command(subparsers)
    return parser


def _example(text: str) -> str:
    return f"example:\n  {text}"


def _cohesion_threshold(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return finite_float(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number such as 0.5, got {value!r}") from None


def add_label_command(subparsers) -> None:
    """Register ``side label`` on ``subparsers``."""
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
    parser.add_argument("--clusters", type=positive_int, default=100, metavar="K", help="KMeans clusters (default: 100, as the paper)")
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
    parser.add_argument("--seed", type=non_negative_int, default=0, help="KMeans seed (default: 0)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="embedding batch size (default: 256)")
    parser.add_argument("--min-cluster-size", type=positive_int, default=2, help="never keep smaller clusters (default: 2)")
    parser.add_argument("--device", type=device, default=None, help="device for the feature extractor (default: cpu)")
    parser.set_defaults(func=run_label)


def run_label(args: argparse.Namespace) -> int:
    """Run ``side label`` with the parsed arguments; return the exit code."""
    from ..labels.surrogate_labels import CONTACT_SHEET, format_label_table, label_synthetic

    check_device(args.device)
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
        epilog=_example(
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
        "unet, pixels, a transformers model id or folder (CLIP, DINOv2), or a TorchScript file such as SSCD",
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

    from ..similarity.measures import PIXEL_SIMILARITIES, SIMILARITIES

    if value in PIXEL_SIMILARITIES:
        return {"similarity": value}
    if value in SIMILARITIES:
        raise CommandError(
            f"--similarity {value}: name the feature extractor whose embeddings are compared instead "
            "(unet, pixels, a transformers model id or folder, or a TorchScript file)."
        )
    close = difflib.get_close_matches(value, SIMILARITIES, n=1, cutoff=0.8)
    if close:
        raise CommandError(
            f"--similarity {value!r} is not one of {PIXEL_SIMILARITIES} nor a feature extractor; did you mean {close[0]!r}?"
        )
    return {"feature_extractor": value}


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``side evaluate`` with the parsed arguments; return the exit code."""
    from ..evaluation.evaluate import evaluate
    from ..evaluation.report import REPORT_MD, format_table

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
    summary("evaluate", started, f"{args.output}/{REPORT_MD}")
    return 0


# --- train-classifier: the same flags and function as `python training/train_classifier.py` ----------


def add_train_classifier_command(subparsers) -> None:
    """Register ``side train-classifier`` on ``subparsers``."""
    from ..training.arguments import add_classifier_arguments

    parser = subparsers.add_parser(
        "train-classifier",
        help="train the time-dependent classifier on the surrogate labels and save a SIDEPipeline",
        description=(
            "SIDE step 6: train p(y | x_t, t) on the `side label` output, noised with the target's own schedule,\n"
            "and write a complete SIDEPipeline (target unet + scheduler + classifier) with a model card. The flags\n"
            "and the training loop are those of training/train_classifier.py (also runnable with accelerate launch)."
        ),
        epilog=_example(
            "side train-classifier --pretrained_model_name_or_path default --train_data_dir side-demo/labels "
            "--output_dir side-demo/side-pipeline --max_train_steps 2000 --resume_from_checkpoint latest"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_classifier_arguments(parser)
    parser.set_defaults(func=run_train_classifier)


def run_train_classifier(args: argparse.Namespace) -> int:
    """Run ``side train-classifier`` with the parsed arguments; return the exit code."""
    from ..training.classifier import train_classifier
    from ..training.common import record_command

    started = time.perf_counter()
    script_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("command", "debug", "func")})
    output = train_classifier(record_command(script_args, sys.argv[1:], "side"))
    summary("train-classifier", started, str(output))
    return 0


# --- train-lora: the same flags and function as `python training/train_lora.py` ----------------------


def add_train_lora_command(subparsers) -> None:
    """Register ``side train-lora`` on ``subparsers``."""
    from ..training.arguments import add_lora_arguments

    parser = subparsers.add_parser(
        "train-lora",
        help="SIDE's LoRA branch: fine-tune the target on the surrogate labels (for `side extract --method side-lora`)",
        description=(
            "SIDE step 6, second branch: make the target conditional on the `side label` output (a zero-initialised\n"
            "label embedding + LoRA adapters, label dropout for classifier-free guidance) and save the adapters with a\n"
            "model card. The flags and the loop are those of training/train_lora.py (also runnable with accelerate launch)."
        ),
        epilog=_example(
            "side train-lora --pretrained_model_name_or_path default --train_data_dir side-demo/labels "
            "--output_dir side-demo/lora-side --rank 8 --max_train_steps 1500 --resume_from_checkpoint latest"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_lora_arguments(parser)
    parser.set_defaults(func=run_train_lora)


def run_train_lora(args: argparse.Namespace) -> int:
    """Run ``side train-lora`` with the parsed arguments; return the exit code."""
    from ..training.common import record_command
    from ..training.lora import train_lora

    started = time.perf_counter()
    script_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("command", "debug", "func")})
    output = train_lora(record_command(script_args, sys.argv[1:], "side"))
    summary("train-lora", started, str(output))
    return 0


# --- generation: synthesize and extract --------------------------------------------------------------


def _add_guidance_space_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--guidance-space", default="xt", choices=GUIDANCE_SPACES,
        help="where the classifier of side/cond reads the sample: xt (the paper, default: the noisy x_t) or x0 (not in "
        "the paper: the predicted clean image, the gradient back-propagated through the UNet: about 1.7x the cost of xt guidance "
        "per image; lambda is then the fraction of the noise prediction's RMS moved per step, e.g. 0.02-0.2)",
    )


def _add_generation_arguments(parser: argparse.ArgumentParser, default_batch: int = 64) -> None:
    parser.add_argument("--pipeline", default="default", metavar="PATH_OR_REPO", help=f"pipeline to audit: a folder, a Hub repo id or an embedded model ({EMBEDDED_CHOICES}; default: default)")
    parser.add_argument("--output", required=True, metavar="DIR", help="new output directory, or the same one to resume")
    parser.add_argument("--batch-size", type=positive_int, default=default_batch, help=f"images per shard (default: {default_batch})")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="run seed; image i uses a seed derived from (seed, i) (default: 0)")
    parser.add_argument("--num-inference-steps", type=positive_int, default=50, help="denoising steps (default: 50)")
    parser.add_argument("--scheduler", default=None, choices=SCHEDULER_NAMES, help="sample with another scheduler (default: the saved one); ddpm, ancestral sampling, is the more sensitive audit: every method copies several times more under it on both embedded targets")
    parser.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin weights (only for checkpoints you trust)")


def add_synthesize_command(subparsers) -> None:
    """Register ``side synthesize`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "synthesize",
        help="SIDE step 1: sample the target without guidance (resumable)",
        description="Sample N images from the unconditional target, in resumable shards, each image from its own seed.",
        epilog=_example("side synthesize --pipeline default --num-samples 2000 --output side-demo/synthetic"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--num-samples", type=positive_int, required=True, metavar="N", help="number of images (N_syn)")
    _add_generation_arguments(parser)
    parser.set_defaults(func=run_synthesize)


def run_synthesize(args: argparse.Namespace) -> int:
    """Run ``side synthesize`` with the parsed arguments; return the exit code."""
    from ..generation.engine import GenerationSettings

    settings = GenerationSettings(
        pipeline=args.pipeline, method="synthetic", num_images=args.num_samples, batch_size=args.batch_size,
        seed=args.seed, num_inference_steps=args.num_inference_steps, scheduler=args.scheduler,
    )
    _run_generation("synthesize", args, settings)
    return 0


def add_extract_command(subparsers) -> None:
    """Register ``side extract`` on ``subparsers``."""
    from ..methods.registry import extraction_method_names

    parser = subparsers.add_parser(
        "extract",
        help="SIDE step 7 and its baselines: generate extraction candidates (resumable, accelerate-aware)",
        description=(
            "Generate N candidates with SIDE (time-dependent classifier guidance toward one surrogate condition per\n"
            "image), SIDE's LoRA branch (side-lora: --pipeline is a `side train-lora` folder), Carlini UnCond (plain\n"
            "sampling) or Carlini Cond (a time-independent classifier). Run under\n"
            "`accelerate launch --num_processes P -m diffusers_side extract ...` to split the shards over P processes."
        ),
        epilog=_example("side extract --pipeline side-demo/side-pipeline --method side --num-images 1000 --guidance-scale 2 --output side-demo/side"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--method", choices=extraction_method_names(), required=True, help="extraction method")
    parser.add_argument("--num-images", type=positive_int, required=True, metavar="N", help="number of candidates (N_G)")
    parser.add_argument("--guidance-scale", type=non_negative_float, default=None, metavar="L", help="lambda for guided methods (default: the method's, 1.0 for side/cond: the Bayes-exact conditional score; for side-lora the classifier-free guidance scale, 1.0: plain conditional)")
    parser.add_argument("--classifier", default=None, metavar="PATH", help="classifier folder replacing the pipeline's own (cond: the time-independent one)")
    parser.add_argument(
        "--exemplars", default=None, metavar="DIR",
        help="side-exemplar: the labelled synthetic set (output of `side label`) whose exact posterior guides instead of a classifier",
    )
    parser.add_argument(
        "--target-selection", type=target_selection, default="uniform", metavar="S",
        help="how each image's target cluster is drawn: uniform (paper, default), weighted (by cohesion), topF "
        "(e.g. top0.2: the most cohesive fifth), duplicates (clusters with near-duplicate synthetic images; side-exemplar)",
    )
    parser.add_argument(
        "--guidance-window", type=timestep_window, default=None, metavar="T_MIN:T_MAX",
        help="guide only at timesteps in [T_MIN, T_MAX] (default: every step, as the paper)",
    )
    _add_guidance_space_argument(parser)
    parser.add_argument(
        "--push-to-hub", default=None, metavar="REPO", help="upload the candidates as a private Hub data set with a card"
    )
    parser.add_argument("--public", action="store_true", help="with --push-to-hub: make the data set public (default: private)")
    _add_generation_arguments(parser)
    parser.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    """Run ``side extract`` with the parsed arguments; return the exit code."""
    from ..generation.engine import GenerationSettings
    from ..methods.registry import get_method

    method = get_method(args.method)
    if not method.guided and args.guidance_scale:
        raise CommandError(f"--method {args.method} samples without guidance; drop --guidance-scale {args.guidance_scale}.")
    guidance_scale = method.default_guidance_scale if args.guidance_scale is None else args.guidance_scale
    if not method.guided:
        guidance_scale = 0.0
    if args.public and not args.push_to_hub:
        raise CommandError("--public only applies to --push-to-hub REPO; add --push-to-hub or drop --public.")
    if args.exemplars is not None and not (Path(args.exemplars) / "surrogate_labels.json").is_file():
        raise CommandError(f"--exemplars {args.exemplars} is not the output of `side label` (no surrogate_labels.json there).")
    if args.push_to_hub:
        check_repo_id(args.push_to_hub, "--push-to-hub")
    settings = GenerationSettings(
        pipeline=args.pipeline, method=args.method, num_images=args.num_images, batch_size=args.batch_size,
        seed=args.seed, num_inference_steps=args.num_inference_steps, guidance_scale=guidance_scale,
        scheduler=args.scheduler, classifier=args.classifier, exemplars=args.exemplars,
        target_selection=args.target_selection, guidance_window=args.guidance_window,
        guidance_space=args.guidance_space,
    )
    dataset = _run_generation("extract", args, settings)
    if dataset is not None and args.push_to_hub:
        from ..generation.hub import push_extraction

        private = not args.public
        print(f"pushed to {push_extraction(dataset, settings, args.push_to_hub, _command_line(), private=private)}")
    return 0


def _run_generation(step: str, args: argparse.Namespace, settings):
    """Generate (split over accelerate processes) and summarise on the main process."""
    from ..workflows.runs import run_generation

    started = time.perf_counter()
    dataset, accelerator = run_generation(settings, args.output, args.allow_pickle)
    if dataset is not None:
        processes = f" on {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""
        summary(f"{step} ({len(dataset)} {settings.method} images{processes})", started, args.output)
    return dataset


def _command_line() -> str:
    return " ".join(["side", *sys.argv[1:]])


def check_repo_id(repo_id: str, flag: str) -> None:
    """Refuse a malformed Hub repo id before any work (huggingface_hub's own rule)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise CommandError(f"{flag} {repo_id!r} is not a Hub repo id such as your-name/side-audit ({error}).") from None


def check_device(name: str | None) -> None:
    """Refuse a device this machine does not have, before any model is loaded."""
    import torch

    if name is None:
        return
    kind = torch.device(name).type
    if kind != "cpu" and not (hasattr(torch, kind) and getattr(torch, kind).is_available()):
        raise CommandError(f"--device {name}: this machine has no {kind} device; use --device cpu (or omit --device).")


# --- sweep, demo, push -------------------------------------------------------------------------------


def _float_list(text: str) -> list[float]:
    try:
        values = [non_negative_float(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers >= 0 such as 0,1,2,5, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one guidance scale")
    return values


def add_sweep_command(subparsers) -> None:
    """Register ``side sweep`` on ``subparsers``."""
    from ..methods.registry import guided_method_names

    parser = subparsers.add_parser(
        "sweep",
        help="extract with SIDE at several guidance scales and plot AMS/UMS against lambda (paper Fig. 10)",
        description="Run `side extract --method side` (or --method) at every scale (same seeds), evaluate each, and plot the curves.",
        epilog=_example("side sweep --pipeline side-demo/classifier-side --guidance-scales 0,1,2,5,10,20 --num-images 500 --output side-sweep"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--method", default="side", choices=guided_method_names(), help="guided method to sweep (default: side; side-lora sweeps the classifier-free guidance scale of a `side train-lora` folder)")
    parser.add_argument("--guidance-scales", type=_float_list, default=[0, 1, 2, 5, 10, 20], metavar="L1,L2,...", help="lambdas (default: 0,1,2,5,10,20)")
    parser.add_argument("--num-images", type=positive_int, required=True, metavar="N", help="candidates per scale (N_G)")
    parser.add_argument("--reference", default="default", metavar="DATASET", help=f"training set to score against: embedded ({EMBEDDED_CHOICES}; default: default), a folder or a Hub id")
    parser.add_argument("--similarity", default="carlini", help="l2, carlini or a feature extractor (default: carlini)")
    parser.add_argument("--classifier", default=None, metavar="PATH", help="time-dependent classifier replacing the pipeline's own")
    _add_guidance_space_argument(parser)
    _add_generation_arguments(parser)
    parser.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    """Run ``side sweep`` with the parsed arguments; return the exit code."""
    from ..generation.settings import GenerationSettings
    from ..workflows.runs import run_sweep as sweep

    started = time.perf_counter()
    base = GenerationSettings(
        pipeline=args.pipeline, method=args.method, num_images=args.num_images, batch_size=args.batch_size, seed=args.seed,
        num_inference_steps=args.num_inference_steps, scheduler=args.scheduler, classifier=args.classifier,
        guidance_space=args.guidance_space,
    )
    plot = sweep(
        base, args.guidance_scales, args.output, args.reference, allow_pickle=args.allow_pickle,
        on_scale_done=lambda scale, path: summary(f"sweep lambda={scale:g}", started, str(path)),
        **similarity_arguments(args.similarity),
    )
    summary("sweep", started, str(plot))
    return 0


def add_demo_command(subparsers) -> None:
    """Register ``side demo`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "demo",
        help="the whole audit of the embedded digits model: synthesize, label, train, extract x4, evaluate",
        description=(
            "Audit the embedded memorizing DDPM end to end, offline: SIDE (and SIDE-exemplar) against Carlini UnCond and\n"
            "Carlini Cond at the same N_G and seeds, sampled ancestrally by default. Writes report.md, report.json\n"
            "and figures into --output. Re-running resumes."
        ),
        epilog=_example(
            "side demo --output side-demo\n  side demo --pipeline digits-rare --reference digits-rare --output side-demo-rare"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default="side-demo", metavar="DIR", help="output directory (default: ./side-demo)")
    parser.add_argument("--quick", action="store_true", help="tiny N for a smoke test (seconds; numbers are meaningless)")
    parser.add_argument(
        "--preset", choices=("demo", "paper"), default=None,
        help="demo (default): N_syn 1000, ResNet-18 width 16 for 600 steps, each method's default lambda, N_G 500 (minutes on 2 cores); "
        "paper: the paper's scale, N_syn 10,000, ResNet-34 width 64 for 20 epochs, lambda swept over "
        "0,1,2,5,10,20,50 on a selection seed, N_G 5,000 (about 6 CPU hours; README 'Full-scale preset'). "
        "The flags below override the preset's values",
    )
    parser.add_argument("--pipeline", default="default", metavar="PATH_OR_REPO", help=f"pipeline to audit: a folder, a Hub repo id or an embedded model ({EMBEDDED_CHOICES}; default: default)")
    parser.add_argument("--reference", default="default", metavar="DATASET", help=f"its training set: embedded ({EMBEDDED_CHOICES}; default: default), a folder or a Hub id")
    parser.add_argument(
        "--guidance-scale", type=non_negative_float, default=None, metavar="L",
        help="lambda of every guided method (default: each method's own, SIDE and Cond 1, SIDE-exemplar 10; "
        "with --preset paper it replaces the sweep)",
    )
    parser.add_argument(
        "--scheduler", default=None, choices=SCHEDULER_NAMES,
        help="sampler of every stage (default: ddpm, 50-step ancestral sampling, under which the embedded targets "
        "copy most; ddim: the targets' saved sampler)",
    )
    parser.add_argument("--num-images", type=positive_int, default=None, metavar="N", help="N_G per method")
    parser.add_argument("--seed", type=non_negative_int, default=None, help="run seed")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Run ``side demo`` with the parsed arguments; return the exit code."""
    from ..evaluation.report import format_table
    from ..workflows.demo import run_demo as run

    overrides = {"pipeline": args.pipeline, "reference": args.reference}
    for name in ("guidance_scale", "num_images", "seed", "scheduler"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    report = run(
        args.output,
        quick=args.quick,
        preset=args.preset,
        on_stage_done=lambda stage, seconds, path: print(f"[side] {stage} done in {seconds:.1f}s -> {path}", flush=True),
        **overrides,
    )
    print(format_table(report))
    if "guidance_selection" in report:
        selection = report["guidance_selection"]
        print(f"SIDE lambda {selection['selected']:g}, chosen on seed {selection['selection_seed']} (sweep-side/sweep.json)")
    print(f"report: {args.output}/report.md")
    return 0


def add_push_command(subparsers) -> None:
    """Register ``side push`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "push",
        help="upload a pipeline folder (with its model card) or extraction candidates to the Hub",
        description=(
            "Upload a folder written by the training scripts or by `side extract` to the Hugging Face Hub. Extraction\n"
            "candidates (which may reproduce private training images) go to a private data set unless --public is given."
        ),
        epilog=_example("side push side-demo/classifier-side --repo your-name/side-digits-audit"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="a pipeline folder (model_index.json) or an extraction folder (generation.json)")
    parser.add_argument("--repo", required=True, help="Hub repo id, e.g. your-name/side-digits-audit")
    parser.add_argument("--private", action="store_true", help="create a pipeline's model repo as private (extraction data sets are private by default)")
    parser.add_argument("--public", action="store_true", help="make an extraction data set public (default: private)")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    parser.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    """Run ``side push`` with the parsed arguments; return the exit code."""
    from ..workflows.runs import push

    started = time.perf_counter()
    check_repo_id(args.repo, "--repo")
    if args.private and args.public:
        raise CommandError("--private and --public contradict each other; pass one of them.")
    push(args.folder, args.repo, _command_line(), token=args.token, private=args.private, public=args.public)
    summary("push", started, f"https://huggingface.co/{args.repo}")
    return 0


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
        print(f"side {args.command}: error: {message}", file=sys.stderr)
        return 2
