"""Train the surrogate-condition classifier p_phi(y | x_t, t) of SIDE and save a ready-to-use `SIDEPipeline`.

The library side of ``training/train_classifier.py`` and ``side train-classifier``: both parse the flags
of `diffusers_side.training.arguments.add_classifier_arguments` and call [`train_classifier`]; the demo builds its flags with
[`classifier_training_args`].

Inputs: the target pipeline (``--pretrained_model_name_or_path``: a folder, a Hub repo id or
an embedded name, ``"default"``, ``"digits-rare"``) and the labelled synthetic set written by ``side label`` (``--train_data_dir``: a
``save_to_disk`` directory with columns image, label, distance, seed and the ``surrogate_labels``
sidecar). Each batch is noised with the **target's own noise schedule** (its betas, hence its abar_t),
t uniform over the training timesteps; the loss is cross-entropy, optimised with AdamW (paper: lr 1e-4).
Loss and accuracy are logged per timestep quartile, as guided-diffusion's classifier training does.
The target is one `diffusers_side.pipelines.target.AuditTarget`: for a latent target (a `UNet2DModel` over the
latents of a `VQModel` / `AutoencoderKL`, as `LDMPipeline`) each batch is encoded by its autoencoder before it is
noised, so the classifier reads the UNet's latents, and the saved pipeline keeps the autoencoder.

``--time_independent`` trains the Carlini et al. "Cond" baseline instead: the same network without its
time module, on clean images only.

The output folder is a complete `SIDEPipeline` (target unet + scheduler + classifier) with a model card
and ``train_log.json`` (including the accuracy per quartile on held-out images).

Example:

```bash
python training/train_classifier.py --pretrained_model_name_or_path default \\
    --train_data_dir side-demo/labels --output_dir side-demo/side-pipeline --max_train_steps 2000
side train-classifier --pretrained_model_name_or_path default --train_data_dir side-demo/labels \\
    --output_dir side-demo/cond-pipeline --time_independent
```
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from datasets import ClassLabel, Dataset, Value
from diffusers import DDPMScheduler
from diffusers.utils import logging
from huggingface_hub import ModelCardData

from ..labels.surrogate_labels import LABELS_JSON, SurrogateLabels
from ..models.classifier import TimeDependentClassifier
from ..models.classifier_size import resolve_classifier_size
from ..models.codec import PixelCodec
from ..pipelines.target import LATENT, PIXEL, AuditTarget
from ..storage.cards import render_card, write_card
from ..storage.data import check_image_source
from ..utils.atomic_io import write_json_atomic
from .arguments import DEFAULT_BASE_CHANNELS, DEFAULT_CLASSIFIER_LAYERS, add_classifier_arguments
from .common import (
    PIXEL_VALUES,
    TRAIN_LOG_NAME,
    ImageData,
    StepOutput,
    TrainingResult,
    batch_generator,
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
from .preload import preloaded_dataloader
from .target_data import check_target_kind, load_training_target, match_target, target_source

logger = logging.get_logger(__name__)

SCRIPT = "train_classifier"
DESCRIPTION = "Train SIDE's time-dependent classifier on surrogate labels and save a SIDEPipeline."
NUM_QUARTILES = 4
SIZE_FLAG_DEFAULTS = {"classifier_layers": DEFAULT_CLASSIFIER_LAYERS, "base_channels": DEFAULT_BASE_CHANNELS}


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parse the command line of ``train_classifier.py`` (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = add_classifier_arguments(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))
    return record_command(parser.parse_args(argv), argv, prog or "python training/train_classifier.py")


def validate_classifier_args(args: argparse.Namespace) -> None:
    """Check the flags against each other; raise before any data or model is loaded."""
    if args.train_data_dir is None:
        raise ValueError("Pass --train_data_dir: the output directory of `side label`.")
    if not 0 <= args.validation_split < 1:
        raise ValueError(f"--validation_split must be in [0, 1), got {args.validation_split}.")
    if args.base_channels < 1:
        raise ValueError(f"--base_channels must be a positive integer, got {args.base_channels}.")
    if args.classifier_size is not None:
        given = [f"--{name} {getattr(args, name)}" for name, default in SIZE_FLAG_DEFAULTS.items() if getattr(args, name) != default]
        if given:
            raise ValueError(
                f"--classifier_size {args.classifier_size} sets the layout and width itself; drop {' and '.join(given)} or "
                "drop --classifier_size."
            )
    check_target_kind(
        args, (PIXEL, LATENT), "the classifier branch guides unconditional UNets (pixel or latent); fine-tune a "
        "text-conditional pipeline with `side train-lora` instead."
    )
    check_image_source(args.train_data_dir)


def read_label_info(args: argparse.Namespace) -> dict[str, Any]:
    """What the labels mean: `SurrogateLabels.to_label_info()` when the sidecar exists, else just their count."""
    if (Path(args.train_data_dir) / LABELS_JSON).is_file():
        info = SurrogateLabels.load(args.train_data_dir).to_label_info()
        if args.num_classes is not None and args.num_classes != info["num_labels"]:
            raise ValueError(
                f"--num_classes {args.num_classes} contradicts the {info['num_labels']} labels recorded in "
                f"{LABELS_JSON}; drop --num_classes."
            )
        return info
    return {"num_labels": args.num_classes}


def check_labels(dataset: Dataset, label_column: str, num_labels: int | None) -> int:
    """Check every label is an integer in ``[0, num_labels)``; return the number of labels.

    Raises:
        `ValueError`: missing column (the message lists the columns), missing or non-integer values,
            labels out of range, or fewer than two labels.
    """
    if label_column not in dataset.column_names:
        raise ValueError(
            f"The data set has no label column {label_column!r}; it has columns {dataset.column_names}. "
            "Pass the output of `side label` or name the column with --label_column."
        )
    feature = dataset.features[label_column]
    if not isinstance(feature, ClassLabel) and not (isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))):
        raise ValueError(
            f"--label_column {label_column!r} holds {feature} values; labels must be integers: name the column of "
            "surrogate labels (default: label)."
        )
    values = dataset[label_column][:]
    if any(v is None for v in values):
        raise ValueError(f"Column {label_column!r} has missing labels; every image needs one.")
    labels = torch.as_tensor(values)
    distinct, largest = len(torch.unique(labels)), int(labels.max())
    if num_labels is None and labels.min() >= 0 and distinct <= largest:  # e.g. {0, 1, 10**6}: 10**6 + 1 outputs
        raise ValueError(f"Column {label_column!r} holds {distinct} distinct labels but its largest is {largest}, so the classifier "
                         f"would get {largest + 1} outputs; relabel them 0..{distinct - 1} (as `side label` writes them), "
                         f"or pass --num_classes {largest + 1} to keep the gaps on purpose.")
    num_labels = num_labels or int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= num_labels:
        raise ValueError(
            f"Labels must lie in [0, {num_labels}) but column {label_column!r} ranges over "
            f"[{int(labels.min())}, {int(labels.max())}]; relabel the data or fix --num_classes."
        )
    if num_labels < 2:
        raise ValueError(f"A classifier needs at least 2 labels; {label_column!r} has {num_labels}.")
    return num_labels


def timestep_quartile(timesteps: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """0 for the least noisy quarter of the timesteps ... 3 for the noisiest."""
    return (timesteps * NUM_QUARTILES) // num_train_timesteps


def noisy_inputs(
    clean: torch.Tensor, timesteps: torch.Tensor, noise_scheduler: DDPMScheduler, generator: torch.Generator
) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with the target's abar_t, noise drawn from ``generator``."""
    noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
    return noise_scheduler.add_noise(clean, noise, timesteps)


def classification_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    noise_scheduler: DDPMScheduler,
    label_column: str,
    time_dependent: bool,
    random_flip: bool,
    codec: PixelCodec | None = None,
) -> StepOutput:
    """Cross-entropy of one batch on x_t (t uniform) or, time-independent, on clean samples.

    The images are flipped (if asked), then mapped into the target's space by ``codec`` (a latent target's
    autoencoder; ``None`` is the identity of a pixel target), then noised. Metrics: accuracy, and loss and
    accuracy per timestep quartile when time-dependent.
    """
    clean, labels = batch[PIXEL_VALUES], batch[label_column]
    if random_flip:
        clean = random_horizontal_flip(clean, generator)
    if codec is not None and codec.is_latent:
        with torch.no_grad():
            clean = codec.encode(clean, generator).to(clean.device, clean.dtype)
    sample, timesteps = clean, None
    if time_dependent:
        num_train_timesteps = noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_train_timesteps, (clean.shape[0],), generator=generator).to(clean.device)
        sample = noisy_inputs(clean, timesteps, noise_scheduler, generator)
    logits = model(sample, timesteps).float()
    losses = F.cross_entropy(logits, labels, reduction="none")
    correct = (logits.argmax(dim=1) == labels).float()
    metrics = {"acc": (correct.sum(), torch.tensor(float(len(labels))))}
    if timesteps is not None:
        quartiles = timestep_quartile(timesteps, num_train_timesteps)
        for quartile in range(NUM_QUARTILES):
            members = (quartiles == quartile).float()
            metrics[f"loss_q{quartile}"] = ((losses * members).sum(), members.sum())
            metrics[f"acc_q{quartile}"] = ((correct * members).sum(), members.sum())
    return StepOutput(losses.mean(), metrics)


@torch.no_grad()
def evaluate_per_quartile(
    classifier: TimeDependentClassifier,
    dataloader: torch.utils.data.DataLoader,
    noise_scheduler: DDPMScheduler,
    label_column: str,
    seed: int,
    codec: PixelCodec | None = None,
) -> dict[str, dict[str, float]]:
    """Accuracy and loss on clean samples and on x_t with t drawn uniformly inside each quartile.

    ``codec`` maps the images into a latent target's space first (``None``: a pixel target).

    Returns:
        `dict`: ``{"clean": {...}, "q0": {...}, ..., "q3": {...}}`` each with ``accuracy``, ``loss``,
        ``timesteps`` (the quartile's range) and ``count``.
    """
    classifier.eval()
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    edges = [q * num_train_timesteps // NUM_QUARTILES for q in range(NUM_QUARTILES + 1)]
    sums = {name: torch.zeros(3) for name in ["clean", *(f"q{q}" for q in range(NUM_QUARTILES))]}
    for index, batch in enumerate(dataloader):
        generator = batch_generator(seed, 0, index)
        clean, labels = batch[PIXEL_VALUES].to(classifier.device), batch[label_column].to(classifier.device)
        if codec is not None and codec.is_latent:
            clean = codec.encode(clean).to(classifier.device, classifier.dtype)  # the posterior's mode: no draw
        zeros = torch.zeros(len(labels), dtype=torch.long, device=clean.device)
        inputs = {"clean": (clean, zeros)}
        for quartile in range(NUM_QUARTILES):
            timesteps = torch.randint(edges[quartile], edges[quartile + 1], (len(labels),), generator=generator)
            timesteps = timesteps.to(clean.device)
            inputs[f"q{quartile}"] = (noisy_inputs(clean, timesteps, noise_scheduler, generator), timesteps)
        for name, (sample, timesteps) in inputs.items():
            logits = classifier(sample, timesteps).float()
            loss = F.cross_entropy(logits, labels, reduction="sum")
            correct = (logits.argmax(dim=1) == labels).sum()
            sums[name] += torch.stack([loss.cpu(), correct.float().cpu(), torch.tensor(float(len(labels)))])
    results = {}
    for name, (loss, correct, count) in sums.items():
        results[name] = {"accuracy": (correct / count).item(), "loss": (loss / count).item(), "count": int(count)}
        if name != "clean":
            quartile = int(name[1:])
            results[name]["timesteps"] = [edges[quartile], edges[quartile + 1] - 1]
    return results


def split_for_validation(data: ImageData, fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """Hold out ``fraction`` of the images (at least one); with 0 the training data doubles as validation."""
    if fraction == 0:
        return data, data
    split = data.dataset.train_test_split(test_size=max(1, round(fraction * len(data.dataset))), seed=seed)
    return dataclasses.replace(data, dataset=split["train"]), dataclasses.replace(data, dataset=split["test"])


def write_model_card(
    args: argparse.Namespace,
    accelerator: Accelerator,
    result: TrainingResult,
    data: ImageData,
    classifier: TimeDependentClassifier,
    evaluation: dict[str, dict[str, float]],
) -> Path:
    """Render ``model_cards/train_classifier.md`` into ``output_dir/README.md``."""
    target = args.pretrained_model_name_or_path
    method = "carlini-cond" if args.time_independent else "side"
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        tags=["diffusers", "diffusers-side", "memorization-audit", "classifier-guidance", method],
        base_model=target_source(args).hub_id,
        model_name=args.hub_model_id or Path(args.output_dir).name,
    )
    log = result.log()
    fields = {
        **vars(args),
        "model_name": card_data.model_name,
        "repo_id": args.hub_model_id or args.output_dir,
        "target": target,
        "label_info": classifier.config.label_info,
        "classifier_config": {k: v for k, v in classifier.config.items() if k in ("layers", "base_channels")},
        "num_images": len(data.dataset),
        "resolution": data.resolution,
        "channels": data.channels,
        "evaluation": evaluation,
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
    target: AuditTarget,
    data: ImageData,
    validation: ImageData,
) -> None:
    """Evaluate per quartile, then write the SIDEPipeline, ``train_log.json`` and the card; push if asked."""
    classifier = result.use_final_weights()
    loader = image_dataloader(
        validation, args.train_batch_size, args.center_crop, extra_columns=[args.label_column], shuffle=False
    )
    evaluation = evaluate_per_quartile(classifier, loader, target.noise_scheduler, args.label_column, args.seed, target.codec)
    logger.info(f"Accuracy per quartile: { {k: round(v['accuracy'], 3) for k, v in evaluation.items()} }")
    pipeline = target.side_pipeline(classifier)
    pipeline.save_pretrained(args.output_dir, safe_serialization=True)
    held_out = "training images" if validation is data else f"{len(validation.dataset)} held-out images"
    log = {**result.log(), "evaluated_on": held_out, "evaluation": evaluation}
    write_json_atomic(Path(args.output_dir) / TRAIN_LOG_NAME, log)
    write_model_card(args, accelerator, result, data, classifier, evaluation)
    if args.push_to_hub:
        push_to_hub(args, args.output_dir, commit_message=f"SIDE classifier trained for {result.global_step} steps")


def classifier_training_args(**flags: Any) -> argparse.Namespace:
    """The flags of a run as keyword arguments: every flag not given takes the parser's default.

    Args:
        flags: flag names without dashes, e.g. ``train_data_dir="labels"``, ``output_dir="out"``,
            ``max_train_steps=600``, ``time_independent=True``; ``output_dir`` is required.

    Returns:
        `argparse.Namespace`: ready for [`train_classifier`], with the equivalent command line recorded
        for the model card.

    Raises:
        `ValueError`: a name that is not a flag of ``train_classifier.py`` (the message lists them).

    Example:

    ```py
    >>> from diffusers_side.training.classifier import classifier_training_args, train_classifier
    >>> args = classifier_training_args(train_data_dir="side-demo/labels", output_dir="side-demo/classifier-side")
    >>> train_classifier(args)
    ```
    """
    return namespace_from_flags(add_classifier_arguments(argparse.ArgumentParser()), flags, "python training/train_classifier.py")


@contextlib.contextmanager
def reproducible_reductions(num_threads: int):
    """Run torch with ``num_threads`` intra-op threads (0: leave them) and deterministic cuDNN, then restore both.

    On CPU the thread count decides how matmul and convolution gradients split their sums, so it decides the
    last bits of every step; with a fixed count the same command gives the same weights on any core count.
    """
    previous = torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1], previous[2]


def train_classifier(args: argparse.Namespace) -> Path:
    """Train the classifier and save the `SIDEPipeline`; the target, data and labels are checked first.

    Args:
        args: from [`parse_args`] or [`classifier_training_args`].

    Returns:
        `Path`: the output directory (a loadable `SIDEPipeline` with ``train_log.json`` and a model card).
    """
    validate_training_args(args)
    validate_classifier_args(args)
    identity = run_identity(args, SCRIPT)
    check_output_dir(args, identity)
    data = load_training_images(args.train_data_dir, args.image_column, args.resolution, args.channels)
    label_info = read_label_info(args)
    label_info["num_labels"] = check_labels(data.dataset, args.label_column, label_info["num_labels"])
    target = load_training_target(args)
    data = match_target(args, data, target)

    accelerator = create_accelerator(args)
    if target.autoencoder is not None:  # frozen; encodes each batch where the classifier trains
        target.autoencoder.requires_grad_(False).eval().to(accelerator.device)
    channels, size, _ = target.sample_shape  # the UNet's samples: latents for a latent target
    train_data, validation = split_for_validation(data, args.validation_split, args.seed)
    layers, base_channels = args.classifier_layers, args.base_channels
    if args.classifier_size is not None:
        chosen = resolve_classifier_size(args.classifier_size, size, len(train_data.dataset))
        layers, base_channels = chosen.layers, chosen.base_channels
        logger.info(f"--classifier_size {args.classifier_size}: {layers} at width {base_channels}.")
    classifier = TimeDependentClassifier(
        in_channels=channels,
        sample_size=size,
        num_classes=label_info["num_labels"],
        layers=layers,
        base_channels=base_channels,
        time_dependent=not args.time_independent,
        label_info=label_info,
    )
    start_output_dir(accelerator, args, identity)
    # the images decoded once (identical batches; see training/preload.py) rather than per batch
    dataloader = preloaded_dataloader(
        train_data, args.train_batch_size, args.center_crop, args.dataloader_num_workers, [args.label_column]
    )
    compute_loss = functools.partial(
        classification_loss,
        noise_scheduler=target.noise_scheduler,
        label_column=args.label_column,
        time_dependent=not args.time_independent,
        random_flip=args.random_flip,
        codec=target.codec,
    )
    with reproducible_reductions(args.torch_threads):
        result = train(accelerator, args, classifier, dataloader, compute_loss, identity)
        if accelerator.is_main_process:
            save_outputs(args, accelerator, result, target, data, validation)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return Path(args.output_dir)
