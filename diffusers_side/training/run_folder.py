"""A training run's arguments and output folder: the recorded command, validation, the run's identity, and the
refusal to resume a folder that holds another run (`check_output_dir`) or to overwrite what is not the tool's."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from accelerate import Accelerator
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..storage.hub import create_repo_early
from ..storage.outputs import check_writable
from ..utils.atomic_io import write_json_atomic
from ..utils.state_files import RUN_CONFIG
from .checkpoint_files import RUN_CONFIG_NAME, TRAIN_LOG_NAME, TRAINING_STATE_NAME, checkpoint_folders, recorded_differences

# Arguments that say how a run is executed rather than what it trains: they may change on resume.
RUN_CONTROL_ARGS = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "max_train_steps",
        "num_epochs",
        "dataloader_num_workers",
        "logging_steps",
        "logging_dir",
        "report_to",
        "push_to_hub",
        "hub_model_id",
        "hub_token",
        "hub_private_repo",
        "command_line",
        "eval_batch_size",
        "ddpm_num_inference_steps",
    }
)


def record_command(args: argparse.Namespace, argv: Sequence[str] | None, prefix: str) -> argparse.Namespace:
    """Store the command line that started the run in ``args.command_line`` (for the model card), token redacted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    shown = [
        "--hub_token=***" if arg.startswith("--hub_token=") else "***" if previous == "--hub_token" else arg
        for previous, arg in zip([None, *argv], argv)
    ]
    args.command_line = shlex.join([*shlex.split(prefix), *shown])
    return args


def namespace_from_flags(parser: argparse.ArgumentParser, flags: dict[str, Any], prog: str) -> argparse.Namespace:
    """Parse ``flags`` (flag name -> value) with ``parser`` as if given on the command line.

    Going through the parser keeps one source for defaults and checks (choices, types); the equivalent
    command line is recorded for the model card.

    Raises:
        `ValueError`: a name that is not one of the parser's flags (the message lists them).
    """
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    unknown = sorted(set(flags) - set(actions))
    if unknown:
        raise ValueError(f"Unknown training flag(s) {unknown}; choose from {sorted(actions)}.")
    argv = []
    for name, value in flags.items():
        option = actions[name].option_strings[0]
        if isinstance(actions[name], argparse.BooleanOptionalAction):
            argv.append(option if value else f"--no-{option[2:]}")
        elif actions[name].nargs == 0:
            argv += [option] if value else []
        elif isinstance(value, (list, tuple)):
            argv += [option, ",".join(str(item) for item in value)]
        else:
            argv += [option, str(value)]
    return record_command(parser.parse_args(argv), argv, prog)


def command_for_card(args: argparse.Namespace, num_processes: int) -> str:
    """The recorded command, shown as an ``accelerate launch`` when several processes trained."""
    command = args.command_line
    if num_processes > 1 and command.startswith("python "):
        command = f"accelerate launch --num_processes {num_processes} " + command[len("python ") :]
    return command


def validate_training_args(args: argparse.Namespace) -> None:
    """Check the shared flags; raise `ValueError` naming the flag and the fix."""
    positive = ["train_batch_size", "gradient_accumulation_steps", "num_epochs", "logging_steps"]
    positive += ["checkpointing_steps", "max_train_steps", "checkpoints_total_limit", "resolution"]
    for name in positive:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}.")
    if args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate}.")
    if args.lr_warmup_steps < 0 or args.dataloader_num_workers < 0:
        raise ValueError("--lr_warmup_steps and --dataloader_num_workers cannot be negative.")
    if args.report_to is not None:
        check_trackers(args.report_to)
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. --hub_model_id your-name/ddpm-digits).")
    if args.hub_model_id is not None:
        try:
            validate_repo_id(args.hub_model_id)
        except HFValidationError as error:
            raise ValueError(f"--hub_model_id {args.hub_model_id!r} is not a Hub repo id such as your-name/ddpm-digits ({error}).") from None
    logging_dir = Path(args.logging_dir)
    if logging_dir.is_absolute() or ".." in logging_dir.parts:
        raise ValueError(f"--logging_dir {args.logging_dir!r} must be a folder name inside --output_dir, such as logs.")
    resume = args.resume_from_checkpoint
    if resume not in (None, "latest") and not (Path(resume) / TRAINING_STATE_NAME).is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume!r} is not a checkpoint directory (no {TRAINING_STATE_NAME}); "
            "pass a checkpoint-N folder or 'latest'."
        )


def check_trackers(report_to: str) -> list[str]:
    """The tracker names of ``--report_to`` (comma separated, or ``all``); each must be installed."""
    from accelerate.tracking import get_available_trackers

    names = [name.strip() for name in report_to.split(",") if name.strip()]
    available = [str(tracker) for tracker in get_available_trackers()]
    missing = [name for name in names if name != "all" and name not in available]
    if missing:
        raise ValueError(
            f"--report_to {','.join(missing)}: not installed (installed trackers: {available or 'none'}); install it "
            "or drop --report_to (train_log.json records the metrics either way)."
        )
    return names


def run_identity(args: argparse.Namespace, script: str) -> dict[str, Any]:
    """The arguments that define a run (everything but `RUN_CONTROL_ARGS`), JSON-ready."""
    identity = {k: v for k, v in sorted(vars(args).items()) if k not in RUN_CONTROL_ARGS}
    return json.loads(json.dumps({"script": script, **identity}, default=str))


def check_output_dir(args: argparse.Namespace, identity: dict[str, Any]) -> None:
    """Refuse an output directory that holds something else, before any work starts.

    An empty or missing directory is fine. A directory holding a run of the same script with the same
    settings is fine when resuming; ``--overwrite_output_dir`` starts any training run over. A folder that
    holds no training run is refused even with ``--overwrite_output_dir``: nothing the scripts did not
    write is ever deleted.

    Raises:
        `FileExistsError`: the directory holds files and the run is not being resumed.
        `ValueError`: the run being resumed was made with different settings (the message lists them).
    """
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"--output_dir {output_dir} is a file; choose a directory.")
    check_writable(output_dir, "--output_dir")
    if args.push_to_hub:  # after the local checks, before any work: an offline push fails now
        create_repo_early(args.hub_model_id, "--push_to_hub", token=args.hub_token, private=args.hub_private_repo)
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return
    config_path = output_dir / RUN_CONFIG_NAME
    if not config_path.is_file():
        raise FileExistsError(
            f"--output_dir {output_dir} is not empty and holds no training run ({RUN_CONFIG_NAME} is missing); "
            "choose an empty directory (--overwrite_output_dir only starts a training run over)."
        )
    if args.overwrite_output_dir:
        return
    if args.resume_from_checkpoint is None:
        raise FileExistsError(
            f"--output_dir {output_dir} already holds a training run; pass --resume_from_checkpoint latest to "
            "continue it or --overwrite_output_dir to start over."
        )
    differences = recorded_differences(RUN_CONFIG.read(config_path), identity)
    if differences:
        raise ValueError(
            f"--output_dir {output_dir} holds a different run ({'; '.join(differences)}); use the same settings "
            "to resume it, another --output_dir, or --overwrite_output_dir."
        )


def start_output_dir(accelerator: Accelerator, args: argparse.Namespace, identity: dict[str, Any]) -> None:
    """Create the output directory (clearing a previous run with ``--overwrite_output_dir``) and record the run."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        if args.overwrite_output_dir and output_dir.is_dir():
            for path in checkpoint_folders(output_dir):
                shutil.rmtree(path)
            for name in (RUN_CONFIG_NAME, TRAIN_LOG_NAME):
                (output_dir / name).unlink(missing_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / RUN_CONFIG_NAME, identity)
    accelerator.wait_for_everyone()
