"""`side train-classifier` and `side train-lora`."""

from __future__ import annotations

import argparse
import sys
import time

from .common import example, summary


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
        epilog=example(
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
        epilog=example(
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
