"""What the training library shares: data, the accelerator, the training loop, the Hub (the run folder and its
checkpoints: `run_folder`, `checkpoint_files`; their names are re-exported here).

`train_dpm.py` and `train_classifier.py` differ only in the model they build, the loss of one batch
and what they save at the end; everything else lives here once. The loop is [`train`]: it takes a
``compute_loss(model, batch, generator)`` callable and handles accumulation, mixed precision, EMA,
logging, checkpoints and resuming.

Resuming is exact. The data order comes from accelerate's seedable sampler (a function of the seed and
the epoch) and skips the batches already seen with `Accelerator.skip_first_batches`; every random draw
of a batch (noise, timesteps, flips) comes from a generator seeded with the seed, the process and the
batch's position in the run. A run killed after a checkpoint and resumed therefore replays the lost
steps with the same data and noise and ends with the same weights as an uninterrupted run.

Checkpoints are written to a temporary folder and renamed into place once complete, so a kill while
saving never leaves a half-written ``checkpoint-N`` behind.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from datasets import Dataset
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import logging
from tqdm.auto import tqdm

from ..storage.data import find_image_column, image_channels, images_to_tensor, load_image_dataset
from ..storage.hub import push_folder
from .checkpoint_files import (  # noqa: F401 (re-exported: the training library's names, as before the split)
    CHECKPOINT_PREFIX,
    EMA_FOLDER,
    RUN_CONFIG_NAME,
    TRAIN_LOG_NAME,
    TRAINING_STATE_NAME,
    checkpoint_folders,
    damaged_checkpoint_message,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .run_folder import (  # noqa: F401 (re-exported, as above)
    RUN_CONTROL_ARGS,
    check_output_dir,
    check_trackers,
    command_for_card,
    namespace_from_flags,
    record_command,
    run_identity,
    start_output_dir,
    validate_training_args,
)

logger = logging.get_logger(__name__)

PIXEL_VALUES = "pixel_values"


# ----------------------------------------------------------------------------------------------------
# Arguments (the flags themselves are defined in the light `diffusers_side.training.arguments`)


# ----------------------------------------------------------------------------------------------------
# Output directory and run identity


# ----------------------------------------------------------------------------------------------------
# Data


@dataclass
class ImageData:
    """A loaded image data set and how its images become tensors."""

    dataset: Dataset
    source: str
    image_column: str
    channels: int
    resolution: int


def load_training_images(
    source: str, image_column: str | None = None, resolution: int | None = None, channels: int | None = None
) -> ImageData:
    """Load ``source`` and settle the image column, channels and resolution (given values first, else the data).

    Raises:
        `ValueError`: no image column (the message lists the columns), an empty data set, or a non-square
            first image without ``resolution``.
    """
    dataset = load_image_dataset(source)
    image_column = find_image_column(dataset, image_column)
    if len(dataset) == 0:
        raise ValueError(f"The data set {source!r} is empty.")
    first = dataset[0][image_column]
    if resolution is None:
        if first.size[0] != first.size[1]:
            raise ValueError(f"The images of {source!r} are not square ({first.size}); pass --resolution.")
        resolution = first.size[0]
    return ImageData(dataset, source, image_column, channels or image_channels(first), resolution)


def image_dataloader(
    data: ImageData,
    batch_size: int,
    center_crop: bool,
    num_workers: int = 0,
    extra_columns: Sequence[str] = (),
    shuffle: bool = True,
) -> torch.utils.data.DataLoader:
    """A data loader of ``{"pixel_values": model-space images in [-1, 1], **extra_columns}``."""

    def transform(batch: dict[str, list]) -> dict[str, torch.Tensor]:
        pixels = images_to_tensor(batch[data.image_column], data.resolution, data.channels, center_crop)
        return {PIXEL_VALUES: pixels * 2 - 1, **{c: torch.as_tensor(batch[c]) for c in extra_columns}}

    dataset = data.dataset.select_columns([data.image_column, *extra_columns]).with_transform(transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)


def random_horizontal_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of a batch left-right with probability 1/2, drawing from ``generator``."""
    flip = torch.rand(images.shape[0], generator=generator).to(images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def batch_generator(seed: int, process_index: int, batch_index: int) -> torch.Generator:
    """A CPU generator for one batch, determined by the seed, the process and the batch's place in the run."""
    state = np.random.SeedSequence([seed, process_index, batch_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ----------------------------------------------------------------------------------------------------
# Accelerator, checkpoints, resume


def create_accelerator(args: argparse.Namespace) -> Accelerator:
    """An `Accelerator` with the run's precision, accumulation, trackers and a seedable (resumable) data order."""
    if not torch.distributed.is_initialized():
        # accelerate keeps one global state per process and refuses a second Accelerator with other settings
        # (e.g. mixed precision). Runs started in-process one after another (the CLI, the demo, tests) each
        # need their own, so a leftover single-process state is cleared first.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    accelerator = Accelerator(
        # Without a GPU (or other accelerator) run on CPU explicitly: under `accelerate launch --multi_gpu` or
        # `torchrun` this makes the processes form a gloo group instead of training independently.
        cpu=not torch.accelerator.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=check_trackers(args.report_to) if args.report_to else None,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    if not accelerator.is_local_main_process:
        logging.set_verbosity_error()
    set_seed(args.seed)
    return accelerator


# ----------------------------------------------------------------------------------------------------
# The training loop


@dataclass
class StepOutput:
    """What ``compute_loss`` returns for one batch.

    Args:
        loss: the scalar to minimise (the batch mean); logged as ``loss``, averaged over batches.
        metrics: name -> (sum, count) over the batch, e.g. per-quartile accuracies; the loop averages
            them over processes, accumulation and the logging window.
    """

    loss: torch.Tensor
    metrics: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass
class TrainingResult:
    """The trained model (unwrapped, EMA weights not yet copied in) and its log."""

    model: torch.nn.Module
    ema: EMAModel | None
    global_step: int
    history: list[dict[str, float]]
    resumed_from: str | None

    @property
    def final_metrics(self) -> dict[str, float]:
        """The metrics of the last logging window."""
        return self.history[-1] if self.history else {}

    def use_final_weights(self) -> torch.nn.Module:
        """Copy the EMA weights into the model (when EMA was used) and return it, in eval mode."""
        if self.ema is not None:
            self.ema.copy_to(self.model.parameters())
        return self.model.eval()

    def log(self) -> dict[str, Any]:
        """The content of ``train_log.json``."""
        final = self.final_metrics
        return {
            "global_step": self.global_step,
            "final_loss": final.get("loss"),
            "final_loss_steps": final.get("steps"),
            "resumed_from": self.resumed_from,
            "history": self.history,
        }


class _MetricWindow:
    """Sums of (value, count) pairs since the last log, reduced over processes when read."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, output: StepOutput) -> None:
        device = output.loss.device
        pairs = {"loss": (output.loss, torch.ones(())), **output.metrics}
        for name, (total, count) in pairs.items():
            value = torch.stack([total.detach().float().reshape(()), count.detach().float().reshape(()).to(device)])
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    def read(self, accelerator: Accelerator) -> dict[str, float]:
        names = sorted(self.sums)
        totals = accelerator.reduce(torch.stack([self.sums[n] for n in names]), "sum").cpu()
        values = {n: (t[0] / t[1]).item() for n, t in zip(names, totals) if t[1] > 0}
        values["steps"] = self.steps
        self.sums, self.steps = {}, 0
        return values


def create_optimizer(
    args: argparse.Namespace, model: torch.nn.Module, max_train_steps: int, num_processes: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and the ``--lr_scheduler`` schedule, counted in steps of all processes (accelerate steps it on each)."""
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=max_train_steps * num_processes,
    )
    return optimizer, lr_scheduler


def create_ema(args: argparse.Namespace, model: torch.nn.Module) -> EMAModel | None:
    """diffusers' `EMAModel` with warm-up (``--ema_inv_gamma``, ``--ema_power``), or ``None`` without ``--use_ema``."""
    if not args.use_ema:
        return None
    return EMAModel(
        model.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        model_cls=type(model),
        model_config=model.config,
    )


def train(
    accelerator: Accelerator,
    args: argparse.Namespace,
    model: torch.nn.Module,
    train_dataloader: torch.utils.data.DataLoader,
    compute_loss: Callable[[torch.nn.Module, dict[str, torch.Tensor], torch.Generator], StepOutput],
    identity: dict[str, Any],
) -> TrainingResult:
    """Train ``model`` with AdamW on ``compute_loss``; resume and checkpoint as the flags say.

    Args:
        accelerator: from [`create_accelerator`].
        args: the parsed flags (see `diffusers_side.training.arguments.add_training_arguments`).
        model: a diffusers `ModelMixin` (its class reloads the EMA checkpoints).
        train_dataloader: from [`image_dataloader`] (not yet prepared).
        compute_loss: ``(prepared model, batch, generator) -> StepOutput``; all randomness of a batch
            must come from ``generator`` for resuming to be exact.
        identity: from [`run_identity`]; stored in checkpoints and checked on resume.

    Returns:
        [`TrainingResult`]
    """
    batches_per_process = math.ceil(len(train_dataloader) / accelerator.num_processes)
    steps_per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    optimizer, lr_scheduler = create_optimizer(args, model, max_train_steps, accelerator.num_processes)
    ema = create_ema(args, model)
    model_cls = type(model)
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    if ema is not None:
        ema.to(accelerator.device)
    if accelerator.is_main_process and args.report_to:
        accelerator.init_trackers(identity["script"], config={k: str(v) for k, v in identity.items()})

    global_step, history, resumed_from = 0, [], None
    checkpoint = find_resume_checkpoint(args)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, identity, ema, model_cls)
        global_step, history, resumed_from = state["global_step"], state["history"], str(checkpoint)

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"Training on {len(train_dataloader.dataset)} images for {max_train_steps} steps "
        f"(batch {total_batch}, {steps_per_epoch} steps per epoch), starting at step {global_step}."
    )
    progress = tqdm(
        total=max_train_steps, initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    window = _MetricWindow()
    first_epoch = global_step // steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:
            break
        model.train()
        train_dataloader.set_epoch(epoch)
        skipped = (global_step - epoch * steps_per_epoch) * args.gradient_accumulation_steps
        batches = accelerator.skip_first_batches(train_dataloader, skipped) if skipped else train_dataloader
        for batch_index, batch in enumerate(batches, start=skipped):
            position = epoch * len(train_dataloader) + batch_index
            generator = batch_generator(args.seed, accelerator.process_index, position)
            with accelerator.accumulate(model):
                output = compute_loss(model, batch, generator)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            window.add(output)
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(model.parameters())
            global_step += 1
            window.steps += 1
            progress.update(1)
            checkpoint_due = global_step % args.checkpointing_steps == 0
            if global_step % args.logging_steps == 0 or checkpoint_due or global_step >= max_train_steps:
                values = {"step": global_step, "lr": lr_scheduler.get_last_lr()[0], **window.read(accelerator)}
                history.append(values)
                accelerator.log(values, step=global_step)
                # the window's mean, read when logging: a per-step .item() would wait for a GPU at every step
                progress.set_postfix(loss=values.get("loss"), lr=values["lr"])
            if checkpoint_due:
                state = {"global_step": global_step, "history": history, "run": identity}
                save_checkpoint(accelerator, args, state, ema)
            if global_step >= max_train_steps:
                break
    progress.close()
    accelerator.wait_for_everyone()
    return TrainingResult(accelerator.unwrap_model(model), ema, global_step, history, resumed_from)


# ----------------------------------------------------------------------------------------------------
# Hub


def push_to_hub(args: argparse.Namespace, folder: str | os.PathLike, commit_message: str) -> str:
    """Upload ``folder`` (without checkpoints and logs) to ``--hub_model_id``; return the commit URL."""
    return push_folder(folder, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo, commit_message=commit_message)
