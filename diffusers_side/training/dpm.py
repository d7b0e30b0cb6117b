"""Train an unconditional DDPM (`UNet2DModel` + `DDPMScheduler`): the model a SIDE audit targets.

The shape follows diffusers' ``examples/unconditional_image_generation/train_unconditional.py``; the
loop, checkpoints and Hub upload are shared with ``train_classifier.py`` (see ``common.py``). The output
folder loads with ``DDPMPipeline.from_pretrained`` and holds a sample grid, ``train_log.json`` and a
model card.

Example:

```bash
python training/train_dpm.py --dataset_name default --output_dir ddpm-digits \\
    --train_batch_size 64 --max_train_steps 20000 --learning_rate 3e-4 --checkpointing_steps 2000 \\
    --resume_from_checkpoint latest
accelerate launch --cpu --num_processes 2 training/train_dpm.py --dataset_name default --output_dir ddpm-digits
```
"""

from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils import logging, make_image_grid
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import ModelCardData

from ..storage.cards import render_card, write_card
from ..storage.embedded import EMBEDDED_CHOICES
from ..storage.sources import DATASET, ModelSource
from ..utils.atomic_io import atomic_path, write_json_atomic
from .arguments import add_data_arguments, add_training_arguments
from .common import (
    PIXEL_VALUES,
    TRAIN_LOG_NAME,
    ImageData,
    StepOutput,
    TrainingResult,
    check_output_dir,
    command_for_card,
    create_accelerator,
    image_dataloader,
    load_training_images,
    namespace_from_flags,
    push_to_hub,
    random_horizontal_flip,
    record_command,
    run_identity,
    start_output_dir,
    train,
    validate_training_args,
)

logger = logging.get_logger(__name__)

SCRIPT = "train_dpm"
DESCRIPTION = "Train an unconditional DDPM (UNet2DModel + DDPMScheduler) to audit with SIDE."
SAMPLE_GRID_NAME = "samples.png"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _comma_list(cast):
    def parse(text: str) -> list:
        return [cast(item.strip()) for item in text.split(",") if item.strip()]

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every flag of ``train_dpm.py`` to ``parser``."""
    add_data_arguments(parser)
    model = parser.add_argument_group("model")
    model.add_argument(
        "--block_out_channels", type=_comma_list(int), default=[32, 64, 64], help="UNet widths per level (32,64,64)."
    )
    model.add_argument("--layers_per_block", type=int, default=1, help="ResNet layers per UNet block.")
    model.add_argument(
        "--down_block_types",
        type=_comma_list(str),
        default=None,
        help="Down blocks, e.g. DownBlock2D,DownBlock2D,AttnDownBlock2D (default: attention at the lowest level).",
    )
    model.add_argument(
        "--up_block_types",
        type=_comma_list(str),
        default=None,
        help="Up blocks, e.g. AttnUpBlock2D,UpBlock2D,UpBlock2D (default: mirror of the down blocks).",
    )
    model.add_argument(
        "--norm_num_groups", type=int, default=None, help="GroupNorm groups (default: gcd of the widths, at most 32)."
    )
    model.add_argument("--ddpm_num_steps", type=int, default=1000, help="Diffusion steps of the noise schedule.")
    model.add_argument("--ddpm_beta_schedule", type=str, default="linear", choices=BETA_SCHEDULES)
    model.add_argument("--prediction_type", type=str, default="epsilon", choices=PREDICTION_TYPES)
    sampling = parser.add_argument_group("sample grid")
    sampling.add_argument("--eval_batch_size", type=int, default=16, help="Images in the final sample grid.")
    sampling.add_argument("--ddpm_num_inference_steps", type=int, default=1000, help="Denoising steps for the grid.")
    add_training_arguments(
        parser,
        learning_rate=1e-4,
        adam_weight_decay=1e-6,
        use_ema=True,
        num_epochs=100,
        lr_scheduler="cosine",
        lr_warmup_steps=100,
    )
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parse the command line of ``train_dpm.py`` (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = add_arguments(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))
    return record_command(parser.parse_args(argv), argv, prog or "python training/train_dpm.py")


def validate_model_args(args: argparse.Namespace) -> None:
    """Fill in the default block types and norm groups and check the UNet flags agree with each other."""
    if (args.dataset_name is None) == (args.train_data_dir is None):
        raise ValueError(
            f"Pass exactly one of --dataset_name (Hub id, embedded {EMBEDDED_CHOICES}, save_to_disk dir) or "
            "--train_data_dir (a folder)."
        )
    levels = len(args.block_out_channels)
    if levels == 0 or min(args.block_out_channels) < 1:
        raise ValueError(f"--block_out_channels needs positive widths, got {args.block_out_channels}.")
    if args.down_block_types is None:
        args.down_block_types = ["DownBlock2D"] * (levels - 1) + ["AttnDownBlock2D"]
    if args.up_block_types is None:
        args.up_block_types = [name.replace("Down", "Up") for name in reversed(args.down_block_types)]
    for flag in ("down_block_types", "up_block_types"):
        if len(getattr(args, flag)) != levels:
            raise ValueError(
                f"--{flag} has {len(getattr(args, flag))} entries but --block_out_channels has {levels}; "
                "give one per level."
            )
    if args.norm_num_groups is None:
        args.norm_num_groups = min(32, math.gcd(*args.block_out_channels))
    if any(width % args.norm_num_groups for width in args.block_out_channels):
        raise ValueError(
            f"--norm_num_groups {args.norm_num_groups} must divide every width in --block_out_channels "
            f"{args.block_out_channels}."
        )
    for name in ("layers_per_block", "ddpm_num_steps", "eval_batch_size", "ddpm_num_inference_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}.")


def check_resolution(args: argparse.Namespace, resolution: int) -> None:
    """The UNet halves the resolution ``levels - 1`` times: it must stay an integer."""
    factor = 2 ** (len(args.block_out_channels) - 1)
    if resolution % factor:
        raise ValueError(
            f"Resolution {resolution} is not divisible by {factor} (the UNet has {len(args.block_out_channels)} "
            "levels); pass a --resolution that is, or fewer --block_out_channels."
        )


def build_unet(args: argparse.Namespace, data: ImageData) -> UNet2DModel:
    """The UNet described by the model flags, for the data's channels and resolution."""
    return UNet2DModel(
        sample_size=data.resolution,
        in_channels=data.channels,
        out_channels=data.channels,
        layers_per_block=args.layers_per_block,
        block_out_channels=tuple(args.block_out_channels),
        down_block_types=tuple(args.down_block_types),
        up_block_types=tuple(args.up_block_types),
        norm_num_groups=args.norm_num_groups,
    )


def build_noise_scheduler(args: argparse.Namespace) -> DDPMScheduler:
    """The training noise schedule the flags describe (also rebuilt from a checkpoint by `training.export`)."""
    return DDPMScheduler(
        num_train_timesteps=args.ddpm_num_steps,
        beta_schedule=args.ddpm_beta_schedule,
        prediction_type=args.prediction_type,
    )


def denoising_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    noise_scheduler: DDPMScheduler,
    random_flip: bool,
) -> StepOutput:
    """The DDPM loss of one batch: MSE between the UNet output and the scheduler's prediction target."""
    clean = batch[PIXEL_VALUES]
    if random_flip:
        clean = random_horizontal_flip(clean, generator)
    noise = randn_tensor(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator
    ).to(clean.device)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    prediction = model(noisy, timesteps).sample
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    elif noise_scheduler.config.prediction_type == "sample":
        target = clean
    else:
        target = noise_scheduler.get_velocity(clean, noise, timesteps)
    return StepOutput(F.mse_loss(prediction.float(), target.float()))


def save_sample_grid(pipeline: DDPMPipeline, args: argparse.Namespace, path: Path) -> Path:
    """Sample ``--eval_batch_size`` images with the trained pipeline and save them as one grid PNG."""
    images = pipeline(
        batch_size=args.eval_batch_size,
        generator=torch.Generator().manual_seed(args.seed),
        num_inference_steps=args.ddpm_num_inference_steps,
        output_type="pil",
    ).images
    rows = max(d for d in range(1, math.isqrt(len(images)) + 1) if len(images) % d == 0)
    grid = make_image_grid([image.convert("RGB") for image in images], rows=rows, cols=len(images) // rows)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


def write_model_card(args: argparse.Namespace, accelerator: Accelerator, result: TrainingResult, data: ImageData):
    """Render ``model_cards/train_dpm.md`` into ``output_dir/README.md``."""
    dataset_id = ModelSource.parse(data.source, repo_type=DATASET).hub_id
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        tags=["diffusers", "unconditional-image-generation", "ddpm", "diffusers-side"],
        datasets=[dataset_id] if dataset_id else None,
        model_name=args.hub_model_id or Path(args.output_dir).name,
    )
    log = result.log()
    fields = {
        **vars(args),
        "model_name": card_data.model_name,
        "repo_id": args.hub_model_id or args.output_dir,
        "sample_grid": SAMPLE_GRID_NAME,
        "dataset": data.source,
        "num_images": len(data.dataset),
        "channels": data.channels,
        "resolution": data.resolution,
        "global_step": result.global_step,
        "final_loss": log["final_loss"],
        "final_loss_steps": log["final_loss_steps"],
        "num_processes": accelerator.num_processes,
        "total_batch_size": args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
        "mixed_precision": accelerator.mixed_precision,
        "command": command_for_card(args, accelerator.num_processes),
    }
    card = render_card(SCRIPT, card_data, **fields)
    return write_card(card, args.output_dir)


def save_outputs(
    args: argparse.Namespace,
    accelerator: Accelerator,
    result: TrainingResult,
    noise_scheduler: DDPMScheduler,
    data: ImageData,
) -> None:
    """Write the pipeline (safetensors), the sample grid, ``train_log.json`` and the card; push if asked."""
    output_dir = Path(args.output_dir)
    pipeline = DDPMPipeline(unet=result.use_final_weights(), scheduler=noise_scheduler)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    save_sample_grid(pipeline, args, output_dir / SAMPLE_GRID_NAME)
    write_json_atomic(output_dir / TRAIN_LOG_NAME, result.log())
    write_model_card(args, accelerator, result, data)
    logger.info(f"Saved the pipeline to {output_dir}")
    if args.push_to_hub:
        push_to_hub(args, output_dir, commit_message=f"DDPM trained for {result.global_step} steps")


def dpm_training_args(**flags: Any) -> argparse.Namespace:
    """The flags of a run as keyword arguments (``output_dir`` required); the rest take the parser's defaults.

    Raises:
        `ValueError`: a name that is not a flag of ``train_dpm.py`` (the message lists them).
    """
    return namespace_from_flags(add_arguments(argparse.ArgumentParser()), flags, "python training/train_dpm.py")


def train_dpm(args: argparse.Namespace) -> Path:
    """Train the DDPM and save it; every input is checked before the first step.

    Args:
        args: from [`parse_args`] or [`dpm_training_args`].

    Returns:
        `Path`: the output directory (loads with `DDPMPipeline.from_pretrained`).
    """
    validate_training_args(args)
    validate_model_args(args)
    identity = run_identity(args, SCRIPT)
    check_output_dir(args, identity)
    source = args.dataset_name or args.train_data_dir
    data = load_training_images(source, args.image_column, args.resolution, args.channels)
    check_resolution(args, data.resolution)

    accelerator = create_accelerator(args)
    unet = build_unet(args, data)  # before anything is written: diffusers rejects unknown block types here
    start_output_dir(accelerator, args, identity)
    noise_scheduler = build_noise_scheduler(args)
    dataloader = image_dataloader(data, args.train_batch_size, args.center_crop, args.dataloader_num_workers)
    compute_loss = functools.partial(denoising_loss, noise_scheduler=noise_scheduler, random_flip=args.random_flip)
    result = train(accelerator, args, unet, dataloader, compute_loss, identity)
    if accelerator.is_main_process:
        save_outputs(args, accelerator, result, noise_scheduler, data)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return Path(args.output_dir)
