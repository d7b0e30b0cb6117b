"""Fine-tune LoRA adapters (and a label embedding) so the audited model samples one surrogate label at a time.

SIDE's second branch (the paper's choice for large models; see `diffusers_side.models.lora`). Inputs: the target
pipeline (``--pretrained_model_name_or_path``: a folder, a Hub repo id or an embedded name, ``"default"``, ``"digits-rare"``) and the labelled
synthetic set written by ``side label`` (``--train_data_dir``: columns image, label, ... and the
``surrogate_labels.json`` sidecar).

- An unconditional `UNet2DModel` target gets a zero-initialised class embedding over K' + 1 labels (the
  last is the null label) and LoRA adapters of rank ``--rank``; both are trained with the target's own
  denoising loss and noise schedule.
- A text-conditional target (Stable-Diffusion-style) gets LoRA adapters on its UNet's attention layers,
  trained on the VAE latents of the labelled images with the prompt ``"<--prompt> <identifier of k>"``.

Each label is replaced by the null label (the prompt alone) with probability ``--label_dropout``, so
classifier-free guidance works at sampling time. The output folder holds the adapters
(``pytorch_lora_weights.safetensors``), the class embedding, ``side_lora.json`` naming the base pipeline,
``train_log.json`` and a model card; it loads with ``SIDELoRAPipeline.from_pretrained`` (or
``SIDELoRATextPipeline``). The loop, checkpoints and exact resume are those of
`diffusers_side.training.common`; ``training/train_lora.py`` and ``side train-lora`` call [`train_lora`].

Example:

```bash
python training/train_lora.py --pretrained_model_name_or_path default --train_data_dir side-demo/labels \\
    --output_dir side-demo/lora-side --rank 8 --max_train_steps 1500
side train-lora --pretrained_model_name_or_path default --train_data_dir side-demo/labels --output_dir side-demo/lora-side
```
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate import Accelerator
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.utils import logging
from huggingface_hub import ModelCardData

from ..models.codec import AutoencoderCodec
from ..models.lora import check_rank, check_shareable_base, find_lora_targets
from ..pipelines.pipeline_side_lora import SIDELoRAPipeline
from ..pipelines.pipeline_side_lora_text import SIDELoRATextPipeline, label_prompt
from ..pipelines.target import PIXEL, TEXT, AuditTarget
from ..storage.cards import render_card, write_card
from ..storage.data import check_image_source
from ..utils.atomic_io import write_json_atomic
from .arguments import add_lora_arguments
from .classifier import check_labels, read_label_info
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
from .dpm import denoising_loss
from .target_data import check_target_kind, load_training_target, match_target, target_source

logger = logging.get_logger(__name__)

SCRIPT = "train_lora"
DESCRIPTION = "Fine-tune LoRA adapters + a label embedding on surrogate labels (SIDE's LoRA branch)."


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parse the command line of ``train_lora.py`` (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = add_lora_arguments(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))
    return record_command(parser.parse_args(argv), argv, prog or "python training/train_lora.py")


def validate_lora_flags(args: argparse.Namespace) -> None:
    """Check the flags against each other and against the target's configs; raise before any data or model is loaded."""
    check_rank(args.rank)
    if args.train_data_dir is None:
        raise ValueError("Pass --train_data_dir: the output directory of `side label`.")
    if not 0 <= args.label_dropout < 1:
        raise ValueError(
            f"--label_dropout must be in [0, 1), got {args.label_dropout}; 0.1 is usual (0 disables classifier-free guidance)."
        )
    if args.use_ema:
        raise ValueError("--use_ema is not supported for LoRA fine-tuning (the adapters are saved as trained); drop it.")
    kind = check_target_kind(  # reads model_index.json only
        args, (PIXEL, TEXT), "LoRA-SIDE fine-tunes pixel-space UNets and text-conditional pipelines; audit a latent "
        "unconditional target with the classifier branch (`side train-classifier`)."
    )
    check_image_source(args.train_data_dir)
    source = target_source(args)
    if args.push_to_hub:
        check_shareable_base(source.resolved)
    text = kind == TEXT
    if text and not args.prompt:
        raise ValueError(
            f"{args.pretrained_model_name_or_path} is a text-conditional pipeline: pass --prompt, the prompt its "
            "synthetic set was generated from (label k is trained as '<prompt> <identifier of k>')."
        )
    if not text and args.prompt:
        raise ValueError(f"--prompt is for text-conditional pipelines; {args.pretrained_model_name_or_path} is unconditional.")
    if args.lora_target_modules:  # the layer names, from a weightless copy of the UNet built from its config
        config = UNet2DConditionModel.load_config(source.name_or_path, subfolder="unet", revision=source.revision)
        unet_class = UNet2DConditionModel if text else UNet2DModel
        with torch.device("meta"):
            unet = unet_class.from_config(config)
        find_lora_targets(unet, args.lora_target_modules, ())


def lora_denoising_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    noise_scheduler,
    label_column: str,
    label_dropout: float,
    random_flip: bool,
    null_label: int,
) -> StepOutput:
    """The target's denoising loss with each image's label, dropped to the null label with probability ``label_dropout``.

    All randomness (dropout, flips, noise, timesteps) comes from ``generator``, so resuming is exact.
    """
    labels = batch[label_column]
    dropped = torch.rand(labels.shape[0], generator=generator).to(labels.device) < label_dropout
    class_labels = torch.where(dropped, torch.full_like(labels, null_label), labels)
    conditional = functools.partial(model, class_labels=class_labels)
    return denoising_loss(conditional, batch, generator, noise_scheduler, random_flip)


def text_lora_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    noise_scheduler,
    codec: AutoencoderCodec,
    prompt_embeddings: torch.Tensor,
    label_column: str,
    label_dropout: float,
    random_flip: bool,
) -> StepOutput:
    """The latent denoising loss with ``prompt_embeddings[label]`` (row K' = the prompt alone, used with prob. ``label_dropout``).

    Images are flipped (if asked) before the frozen VAE (``codec``) encodes them, its posterior sampled with
    ``generator``; all randomness comes from ``generator``.
    """
    labels = batch[label_column]
    dropped = torch.rand(labels.shape[0], generator=generator).to(labels.device) < label_dropout
    rows = torch.where(dropped, torch.full_like(labels, len(prompt_embeddings) - 1), labels)
    pixels = batch[PIXEL_VALUES]
    if random_flip:
        pixels = random_horizontal_flip(pixels, generator)
    with torch.no_grad():
        latents = codec.encode(pixels, generator)
    conditional = functools.partial(model, encoder_hidden_states=prompt_embeddings[rows])
    return denoising_loss(conditional, {PIXEL_VALUES: latents}, generator, noise_scheduler, random_flip=False)


@torch.no_grad()
def label_prompt_embeddings(pipeline: SIDELoRATextPipeline, prompt: str) -> torch.Tensor:
    """Text embeddings of the K' label prompts followed by the prompt alone (the null label), shape (K' + 1, L, D)."""
    prompts = [label_prompt(prompt, k) for k in range(pipeline.num_labels)] + [label_prompt(prompt, None)]
    return pipeline.encode_prompts(prompts)


def build_pipeline(
    args: argparse.Namespace, accelerator: Accelerator, target: AuditTarget, label_info: dict
) -> tuple[SIDELoRAPipeline | SIDELoRATextPipeline, Callable]:
    """The pipeline to fine-tune (adapters attached to the target's UNet) and the loss of one batch."""
    lora = (target.pipeline, label_info["num_labels"], args.rank, args.lora_alpha, args.lora_target_modules, label_info)
    if target.kind != TEXT:
        pipeline = SIDELoRAPipeline.from_base(*lora)
        loss = functools.partial(lora_denoising_loss, null_label=pipeline.null_label)
    else:
        pipeline = SIDELoRATextPipeline.from_base(*lora, prompt=args.prompt)
        pipeline.vae.requires_grad_(False).to(accelerator.device)
        pipeline.text_encoder.requires_grad_(False).to(accelerator.device)
        embeddings = label_prompt_embeddings(pipeline, args.prompt)
        loss = functools.partial(text_lora_loss, codec=target.codec, prompt_embeddings=embeddings)
    compute_loss = functools.partial(
        loss,
        noise_scheduler=target.noise_scheduler,
        label_column=args.label_column,
        label_dropout=args.label_dropout,
        random_flip=args.random_flip,
    )
    pipeline.base_model = target.reference
    return pipeline, compute_loss


def write_model_card(
    args: argparse.Namespace,
    accelerator: Accelerator,
    result: TrainingResult,
    data: ImageData,
    pipeline: SIDELoRAPipeline | SIDELoRATextPipeline,
) -> Path:
    """Render ``model_cards/train_lora.md`` into ``output_dir/README.md``."""
    target = args.pretrained_model_name_or_path
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-image" if isinstance(pipeline, SIDELoRATextPipeline) else "unconditional-image-generation",
        tags=["diffusers", "diffusers-side", "memorization-audit", "lora", "side-lora"],
        base_model=target_source(args).hub_id,
        model_name=args.hub_model_id or Path(args.output_dir).name,
    )
    log = result.log()
    fields = {
        **vars(args),
        "model_name": card_data.model_name,
        "repo_id": args.hub_model_id or args.output_dir,
        "target": target,
        "lora": pipeline.lora_config(),
        "label_info": pipeline.label_info,
        "num_images": len(data.dataset),
        "resolution": data.resolution,
        "channels": data.channels,
        "trainable_parameters": sum(p.numel() for p in pipeline.unet.parameters() if p.requires_grad),
        "global_step": result.global_step,
        "final_loss": log["final_loss"],
        "num_processes": accelerator.num_processes,
        "total_batch_size": args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
        "command": command_for_card(args, accelerator.num_processes),
    }
    return write_card(render_card(SCRIPT, card_data, **fields), args.output_dir)


def save_outputs(
    args: argparse.Namespace,
    accelerator: Accelerator,
    result: TrainingResult,
    data: ImageData,
    pipeline: SIDELoRAPipeline | SIDELoRATextPipeline,
) -> None:
    """Write the adapters, class embedding, ``side_lora.json``, ``train_log.json`` and the card; push if asked."""
    pipeline.unet = result.use_final_weights()
    pipeline.save_pretrained(args.output_dir)
    write_json_atomic(Path(args.output_dir) / TRAIN_LOG_NAME, result.log())
    write_model_card(args, accelerator, result, data, pipeline)
    if args.push_to_hub:
        push_to_hub(args, args.output_dir, commit_message=f"LoRA-SIDE adapters trained for {result.global_step} steps")


def lora_training_args(**flags: Any) -> argparse.Namespace:
    """The flags of a run as keyword arguments: every flag not given takes the parser's default.

    Args:
        flags: flag names without dashes, e.g. ``train_data_dir="labels"``, ``output_dir="out"``, ``rank=8``;
            ``output_dir`` is required.

    Returns:
        `argparse.Namespace`: ready for [`train_lora`], with the equivalent command line recorded for the card.

    Raises:
        `ValueError`: a name that is not a flag of ``train_lora.py`` (the message lists them).

    Example:

    ```py
    >>> from diffusers_side.training.lora import lora_training_args, train_lora
    >>> train_lora(lora_training_args(train_data_dir="side-demo/labels", output_dir="side-demo/lora-side", rank=8))
    ```
    """
    return namespace_from_flags(add_lora_arguments(argparse.ArgumentParser()), flags, "python training/train_lora.py")


def train_lora(args: argparse.Namespace) -> Path:
    """
    Fine-tune and save; the flags, the target, the data, the labels and the adapters' fit are checked first.

    Args:
        args: from [`parse_args`] or [`lora_training_args`].

    Returns:
        `Path`: the output directory (loadable with `SIDELoRAPipeline` / `SIDELoRATextPipeline.from_pretrained`).
    """
    validate_training_args(args)
    validate_lora_flags(args)
    identity = run_identity(args, SCRIPT)
    check_output_dir(args, identity)
    data = load_training_images(args.train_data_dir, args.image_column, args.resolution, args.channels)
    label_info = read_label_info(args)
    label_info["num_labels"] = check_labels(data.dataset, args.label_column, label_info["num_labels"])
    target = load_training_target(args)
    data = match_target(args, data, target)

    accelerator = create_accelerator(args)  # seeds torch: the adapters' initialisation is reproducible
    pipeline, compute_loss = build_pipeline(args, accelerator, target, label_info)
    start_output_dir(accelerator, args, identity)
    dataloader = image_dataloader(data, args.train_batch_size, args.center_crop, args.dataloader_num_workers, [args.label_column])
    result = train(accelerator, args, pipeline.unet, dataloader, compute_loss, identity)
    if accelerator.is_main_process:
        save_outputs(args, accelerator, result, data, pipeline)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return Path(args.output_dir)
