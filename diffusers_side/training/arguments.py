"""The flags of the training scripts, defined without importing torch or diffusers.

``side train-classifier`` builds its parser from here, so ``side --help`` and argument errors answer at
once; the values are typed (`diffusers_side.utils.arg_types`), so a bad number is refused at parse time.

`LR_SCHEDULERS` and `CLASSIFIER_LAYERS` name what `diffusers.optimization.get_scheduler` and
`diffusers_side.models.classifier.RESNET_LAYOUTS` accept; tests check they stay in step.
"""

from __future__ import annotations

import argparse

from ..models.classifier_size import CLASSIFIER_SIZES
from ..storage.embedded import EMBEDDED_CHOICES
from ..utils.arg_types import finite_float, non_negative_float, non_negative_int, positive_float, positive_int, unit_interval

# diffusers' `SchedulerType` values, without "piecewise_constant" (it needs a rule string this script does not take).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
CLASSIFIER_LAYERS = ("resnet8", "resnet10", "resnet18", "resnet34")
DEFAULT_CLASSIFIER_LAYERS, DEFAULT_BASE_CHANNELS = "resnet18", 32
# The intra-op thread count of classifier training by default (see `training.classifier.reproducible_reductions`).
REPRODUCIBLE_THREADS = 1


def add_data_arguments(parser: argparse.ArgumentParser, with_dataset_name: bool = True) -> None:
    """Add the data set flags (source, image column, resolution, channels, augmentation)."""
    group = parser.add_argument_group("data")
    if with_dataset_name:
        group.add_argument(
            "--dataset_name",
            type=str,
            default=None,
            help=f"A Hub data set id, an embedded model's training subset ({EMBEDDED_CHOICES}) or a `save_to_disk` directory.",
        )
    group.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="A local directory: an `imagefolder` of image files or a `Dataset.save_to_disk` directory.",
    )
    group.add_argument("--image_column", type=str, default=None, help="The image column (default: detected).")
    group.add_argument(
        "--resolution", type=positive_int, default=None, help="Square training resolution (default: the first image's size)."
    )
    group.add_argument("--center_crop", action="store_true", help="Crop the centre instead of squashing to a square.")
    group.add_argument("--random_flip", action="store_true", help="Flip training images horizontally at random.")
    group.add_argument(
        "--channels", type=int, choices=(1, 3), default=None, help="1 (grayscale) or 3 (RGB); default: from the data."
    )
    group.add_argument("--dataloader_num_workers", type=non_negative_int, default=0, help="Data loader worker processes.")


def add_training_arguments(
    parser: argparse.ArgumentParser,
    *,
    learning_rate: float,
    adam_weight_decay: float,
    use_ema: bool,
    num_epochs: int,
    lr_scheduler: str = "constant",
    lr_warmup_steps: int = 0,
) -> None:
    """Add the optimisation, checkpointing, logging and Hub flags; defaults differ per script."""
    group = parser.add_argument_group("training")
    group.add_argument("--output_dir", type=str, required=True, help="Where the trained pipeline and checkpoints go.")
    group.add_argument(
        "--overwrite_output_dir", action="store_true", help="Start over in an output directory that holds a run."
    )
    group.add_argument("--seed", type=non_negative_int, default=0, help="Seed for initialisation, data order and noise.")
    group.add_argument("--train_batch_size", type=positive_int, default=16, help="Batch size per process.")
    group.add_argument("--num_epochs", type=positive_int, default=num_epochs, help="Epochs (ignored with --max_train_steps).")
    group.add_argument("--max_train_steps", type=positive_int, default=None, help="Optimisation steps; overrides --num_epochs.")
    group.add_argument("--gradient_accumulation_steps", type=positive_int, default=1, help="Batches per optimisation step.")
    group.add_argument("--learning_rate", type=positive_float, default=learning_rate, help="Peak learning rate.")
    group.add_argument(
        "--lr_scheduler",
        type=str,
        default=lr_scheduler,
        choices=LR_SCHEDULERS,
        help="Learning-rate schedule (diffusers.optimization.get_scheduler).",
    )
    group.add_argument("--lr_warmup_steps", type=non_negative_int, default=lr_warmup_steps, help="Warm-up steps of the schedule.")
    group.add_argument("--adam_beta1", type=unit_interval, default=0.9)
    group.add_argument("--adam_beta2", type=unit_interval, default=0.999)
    group.add_argument("--adam_weight_decay", type=non_negative_float, default=adam_weight_decay)
    group.add_argument("--adam_epsilon", type=positive_float, default=1e-8)
    group.add_argument("--max_grad_norm", type=non_negative_float, default=1.0, help="Gradient clipping norm (0 disables).")
    group.add_argument(
        "--use_ema", action=argparse.BooleanOptionalAction, default=use_ema, help="Keep and save EMA weights."
    )
    group.add_argument("--ema_max_decay", type=unit_interval, default=0.9999)
    group.add_argument("--ema_inv_gamma", type=positive_float, default=1.0)
    group.add_argument("--ema_power", type=positive_float, default=3 / 4)
    group.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=("no", "fp16", "bf16"),
        help="Mixed precision (default: the accelerate config).",
    )
    group.add_argument("--checkpointing_steps", type=positive_int, default=500, help="Save a resumable state every N steps.")
    group.add_argument("--checkpoints_total_limit", type=positive_int, default=None, help="Keep at most this many checkpoints.")
    group.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='"latest" (the newest checkpoint in --output_dir; starts fresh if none) or a checkpoint directory.',
    )
    group.add_argument("--logging_steps", type=positive_int, default=10, help="Average and log the metrics every N steps.")
    group.add_argument(
        "--report_to", type=str, default=None, help="accelerate tracker(s), e.g. tensorboard, wandb or all."
    )
    group.add_argument("--logging_dir", type=str, default="logs", help="Tracker directory inside --output_dir.")
    hub = parser.add_argument_group("hub")
    hub.add_argument("--push_to_hub", action="store_true", help="Upload the output folder to the Hub at the end.")
    hub.add_argument("--hub_model_id", type=str, default=None, help="The Hub repository, e.g. user/ddpm-digits.")
    hub.add_argument("--hub_token", type=str, default=None, help="Hub token (default: the logged-in one).")
    hub.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repository as private.")



def add_labelled_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The audited pipeline and the labelled synthetic set (``side label``'s output) that both SIDE branches train on."""
    target = parser.add_argument_group("target")
    target.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default="default",
        help=f"The audited pipeline: a folder, a Hub repo id or an embedded model ({EMBEDDED_CHOICES}).",
    )
    target.add_argument(
        "--revision",
        type=str,
        default=None,
        help="The Hub branch, tag or commit of --pretrained_model_name_or_path (a repo id only; or write user/repo@rev).",
    )
    add_data_arguments(parser, with_dataset_name=False)
    parser.add_argument("--label_column", type=str, default="label", help="The surrogate-label column.")
    parser.add_argument(
        "--num_classes",
        type=positive_int,
        default=None,
        help="Number of labels (default: from surrogate_labels.json, else the largest label + 1).",
    )


def add_classifier_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every flag of ``train_classifier.py`` to ``parser`` (also used by ``side train-classifier``)."""
    add_labelled_target_arguments(parser)
    parser.add_argument(
        "--validation_split",
        type=finite_float,
        default=0.1,
        help="Fraction of images held out to measure accuracy per quartile at the end (0: measure on training data).",
    )
    model = parser.add_argument_group("classifier")
    model.add_argument("--classifier_layers", type=str, default=DEFAULT_CLASSIFIER_LAYERS, choices=CLASSIFIER_LAYERS)
    model.add_argument(
        "--base_channels", type=positive_int, default=DEFAULT_BASE_CHANNELS, help="Width of the classifier's first stage."
    )
    model.add_argument(
        "--classifier_size",
        type=str,
        default=None,
        choices=CLASSIFIER_SIZES,
        help="Set --classifier_layers and --base_channels by name instead: paper (ResNet-34, width 64), demo "
        "(ResNet-18, width 16) or auto (sized to the images and the labelled set: three or four stages of one block "
        "from the image side, width 16/32/64 from the number of training images; diffusers_side.models.classifier_size).",
    )
    model.add_argument(
        "--time_independent",
        action="store_true",
        help="Carlini Cond baseline: no time module, trained on clean images only.",
    )
    parser.add_argument(
        "--torch_threads",
        type=non_negative_int,
        default=REPRODUCIBLE_THREADS,
        help="CPU threads for training and the final evaluation. The default 1 makes the weights the same whatever "
        "the machine's core count (several threads split reductions differently, and SIDE amplifies the last-bit "
        "differences); 0 keeps torch's default, faster on many cores but tied to the thread count.",
    )
    add_training_arguments(parser, learning_rate=1e-4, adam_weight_decay=0.0, use_ema=False, num_epochs=20)
    return parser


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_lora_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every flag of ``train_lora.py`` to ``parser`` (also used by ``side train-lora``)."""
    add_labelled_target_arguments(parser)
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (the paper uses 512 on Stable Diffusion).")
    lora.add_argument("--lora_alpha", type=positive_float, default=None, help="LoRA alpha (default: the rank, i.e. scale 1).")
    lora.add_argument(
        "--lora_target_modules",
        type=_comma_list,
        default=None,
        help="Comma-separated layer-name suffixes to adapt (default: attention to_q,to_k,to_v,to_out.0 and ResNet "
        "conv1,conv2,time_emb_proj, those the UNet has).",
    )
    lora.add_argument(
        "--prompt",
        type=str,
        default=None,
        help="Text-conditional pipelines only (required there): the prompt the synthetic set was generated from; "
        "label k is trained as '<prompt> <identifier of k>'.",
    )
    lora.add_argument(
        "--label_dropout",
        type=finite_float,
        default=0.1,
        help="Probability in [0, 1) of replacing a label by the null label (enables classifier-free guidance).",
    )
    add_training_arguments(parser, learning_rate=1e-4, adam_weight_decay=0.0, use_ema=False, num_epochs=20)
    return parser
