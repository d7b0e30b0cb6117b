"""Every flag of every `side` subcommand, given a bad value: a one-line error naming it, exit status 2,
before any model is loaded. Values checked by the parser are also checked without importing torch.
"""

import argparse
import json
import subprocess
import sys

import pytest
from test_reliability import no_model_loading, save_side_pipeline, smooth_images, write_labels  # noqa: F401 (fixture)

from conftest import subprocess_env, write_generation_dir
from diffusers_side.audits.canary import make_canaries
from diffusers_side.cli import build_parser
from diffusers_side.cli import main as side

PARSE = "parse"  # refused by the parser itself (no heavy import)
RUN = "run"  # refused by the command, before any model is loaded

GENERATION_ROWS = [
    ("--pipeline", "{missing}", "missing", RUN),
    ("--output", "{file}", "is a file", RUN),
    ("--batch-size", "0", "--batch-size", PARSE),
    ("--seed", "-1", "--seed", PARSE),
    ("--num-inference-steps", "0", "--num-inference-steps", PARSE),
    ("--scheduler", "heun2", "heun2", PARSE),
]

# the loop flags shared by every training script (`add_training_arguments`)
TRAINING_LOOP_ROWS = [
    ("--seed", "-1", "--seed", PARSE),
    ("--train_batch_size", "0", "--train_batch_size", PARSE),
    ("--num_epochs", "0", "--num_epochs", PARSE),
    ("--max_train_steps", "0", "--max_train_steps", PARSE),
    ("--gradient_accumulation_steps", "0", "--gradient_accumulation_steps", PARSE),
    ("--learning_rate", "nan", "--learning_rate", PARSE),
    ("--lr_scheduler", "bogus", "--lr_scheduler", PARSE),
    ("--lr_warmup_steps", "-1", "--lr_warmup_steps", PARSE),
    ("--adam_beta1", "1.5", "--adam_beta1", PARSE),
    ("--adam_beta2", "nan", "--adam_beta2", PARSE),
    ("--adam_weight_decay", "-1", "--adam_weight_decay", PARSE),
    ("--adam_epsilon", "0", "--adam_epsilon", PARSE),
    ("--max_grad_norm", "inf", "--max_grad_norm", PARSE),
    ("--ema_max_decay", "2", "--ema_max_decay", PARSE),
    ("--ema_inv_gamma", "0", "--ema_inv_gamma", PARSE),
    ("--ema_power", "nan", "--ema_power", PARSE),
    ("--mixed_precision", "bogus", "--mixed_precision", PARSE),
    ("--checkpointing_steps", "0", "--checkpointing_steps", PARSE),
    ("--checkpoints_total_limit", "0", "--checkpoints_total_limit", PARSE),
    ("--resume_from_checkpoint", "{missing}", "--resume_from_checkpoint", RUN),
    ("--logging_steps", "0", "--logging_steps", PARSE),
    ("--report_to", "bogus", "--report_to", RUN),
    ("--logging_dir", "../outside", "--logging_dir", RUN),
    ("--hub_model_id", "not a repo id!", "--hub_model_id", RUN, ["--push_to_hub"]),
]

# command: (valid arguments, [(flag, bad value, fragment of the error, where it is refused, extra arguments), ...])
TABLE = {
    "synthesize": (
        ["--num-samples", "4", "--pipeline", "{pipe}", "--output", "{out}"],
        [("--num-samples", "0", "--num-samples", PARSE), *GENERATION_ROWS],
    ),
    "extract": (
        ["--method", "side", "--num-images", "4", "--pipeline", "{pipe}", "--output", "{out}"],
        [
            ("--method", "bogus", "--method", PARSE),
            ("--num-images", "0", "--num-images", PARSE),
            ("--guidance-scale", "nan", "--guidance-scale", PARSE),
            ("--classifier", "{missing}", "missing", RUN),
            ("--push-to-hub", "not a repo id!", "not a repo id!", RUN),
            ("--exemplars", "{missing}", "missing", RUN, ["--method", "side-exemplar"]),
            ("--target-selection", "top2", "--target-selection", PARSE),
            ("--guidance-window", "9:1", "--guidance-window", PARSE),
            ("--guidance-space", "x1", "--guidance-space", PARSE),
            ("--guidance-space", "x0", "guidance_space='x0'", RUN, ["--method", "uncond"]),
            ("--restart-strength", "1.5", "--restart-strength", PARSE),
            ("--restart-strength", "0.01", "re-runs no step", RUN),
            *GENERATION_ROWS,
        ],
    ),
    "label": (
        ["--synthetic", "{synthetic}", "--output", "{out}", "--features", "pixels", "--clusters", "3"],
        [
            ("--synthetic", "{missing}", "missing", RUN),
            ("--output", "{file}", "is a file", RUN),
            ("--clusters", "1", "--clusters", RUN),
            ("--cohesion", "nan", "--cohesion", PARSE),
            ("--features", "{missing}.pt", "does not exist", RUN),
            ("--pipeline", "{missing}", "missing", RUN, ["--features", "unet"]),
            ("--seed", "-1", "--seed", PARSE),
            ("--batch-size", "0", "--batch-size", PARSE),
            ("--min-cluster-size", "0", "--min-cluster-size", PARSE),
            ("--device", "bogus", "--device", PARSE),
        ],
    ),
    "train-classifier": (
        ["--pretrained_model_name_or_path", "{pipe}", "--train_data_dir", "{labels}", "--output_dir", "{out}"],
        [
            ("--pretrained_model_name_or_path", "{missing}", "missing", RUN),
            ("--revision", "v1", "revision='v1' applies to Hub repo ids only", RUN),
            ("--train_data_dir", "{missing}", "missing", RUN),
            ("--image_column", "nope", "nope", RUN),
            ("--resolution", "0", "--resolution", PARSE),
            ("--channels", "2", "--channels", PARSE),
            ("--dataloader_num_workers", "-1", "--dataloader_num_workers", PARSE),
            ("--label_column", "nope", "nope", RUN),
            ("--num_classes", "1", "--num_classes", RUN),
            ("--validation_split", "1.5", "--validation_split", RUN),
            ("--classifier_layers", "bogus", "--classifier_layers", PARSE),
            ("--base_channels", "0", "--base_channels", PARSE),
            ("--classifier_size", "huge", "--classifier_size", PARSE),
            ("--classifier_size", "auto", "--classifier_size auto sets the layout and width itself", RUN, ["--base_channels", "8"]),
            ("--torch_threads", "-1", "--torch_threads", PARSE),
            ("--output_dir", "{file}", "is a file", RUN),
            *TRAINING_LOOP_ROWS,
        ],
    ),
    "train-lora": (
        ["--pretrained_model_name_or_path", "{pipe}", "--train_data_dir", "{labels}", "--output_dir", "{out}"],
        [
            ("--pretrained_model_name_or_path", "{missing}", "missing", RUN),
            ("--revision", "v1", "revision='v1' applies to Hub repo ids only", RUN),
            ("--train_data_dir", "{missing}", "missing", RUN),
            ("--image_column", "nope", "nope", RUN),
            ("--resolution", "0", "--resolution", PARSE),
            ("--channels", "2", "--channels", PARSE),
            ("--dataloader_num_workers", "-1", "--dataloader_num_workers", PARSE),
            ("--label_column", "nope", "nope", RUN),
            ("--num_classes", "1", "--num_classes", RUN),
            ("--rank", "0", "--rank", PARSE),
            ("--lora_alpha", "-1", "--lora_alpha", PARSE),
            ("--lora_target_modules", "nope", "['nope'] match no linear or convolution layer", RUN),
            ("--prompt", "a photo", "--prompt is for text-conditional pipelines", RUN),
            ("--label_dropout", "1", "--label_dropout", RUN),
            ("--output_dir", "{file}", "is a file", RUN),
            *TRAINING_LOOP_ROWS,
        ],
    ),
    "candidates": (
        ["--generated", "{synthetic}"],
        [
            ("--generated", "{missing}", "missing", RUN),
            ("--output", "{file}", "is a file", RUN),
            ("--threshold", "0", "--threshold", PARSE),
            ("--max-neighbors", "0", "--max-neighbors", PARSE),
            ("--device", "bogus", "--device", PARSE),
        ],
    ),
    "divergence": (
        ["--pipeline", "{pipe}", "--reference", "{reference}", "--output", "{out}"],
        [
            ("--pipeline", "{missing}", "does not exist", RUN),
            ("--reference", "{missing}", "missing", RUN),
            ("--holdout", "embedded", "--holdout embedded takes an embedded", RUN),
            ("--output", "{file}", "is a file", RUN),
            ("--eps", "0", "--eps", PARSE),
            ("--num-samples", "0", "--num-samples", PARSE),
            ("--num-probes", "0", "--num-probes", PARSE),
            ("--batch-size", "0", "--batch-size", PARSE),
            ("--rtol", "nan", "--rtol", PARSE),
            ("--atol", "-1", "--atol", PARSE),
            ("--seed", "-1", "--seed", PARSE),
            ("--device", "bogus", "--device", PARSE),
        ],
    ),
    "query-only": (
        ["--pipeline", "{pipe}", "--classifier", "{pipe}", "--queries", "4", "--output", "{out}"],
        [
            ("--pipeline", "{missing}", "does not exist", RUN),
            ("--classifier", "{file}", "is not a folder", RUN),
            ("--queries", "0", "--queries", PARSE),
            ("--num-targets", "0", "--num-targets", PARSE),
            ("--num-best", "0", "--num-best", PARSE),
            ("--popsize", "0", "--popsize", PARSE),
            ("--sigma0", "inf", "--sigma0", PARSE),
            ("--num-inference-steps", "0", "--num-inference-steps", PARSE),
            ("--batch-size", "0", "--batch-size", PARSE),
            ("--seed", "-1", "--seed", PARSE),
            ("--device", "bogus", "--device", PARSE),
            ("--output", "{file}", "is a file", RUN),
        ],
    ),
    "study": (
        ["{study}", "--phase", "report", "--output", "{out}"],
        [
            ("config", "{missing}", "does not exist", RUN),
            ("config", "{file}", "is not valid JSON", RUN),
            ("--phase", "bogus", "--phase", PARSE),
            ("--output", "{file}", "is a file", RUN),
        ],
    ),
    "evaluate": (
        ["--generated", "{synthetic}", "--reference", "{reference}", "--output", "{out}"],
        [
            ("--generated", "{missing}", "missing", RUN),
            ("--reference", "{missing}", "missing", RUN),
            ("--output", "{file}", "is a file", RUN),
            ("--similarity", "{missing}.pt", "does not exist", RUN),
            ("--bands", "high:0", "high:0", RUN),
            ("--resolution", "0", "--resolution", PARSE),
            ("--channels", "2", "--channels", PARSE),
            ("--chunk-size", "0", "--chunk-size", PARSE),
            ("--batch-size", "0", "--batch-size", PARSE),
            ("--pipeline", "{missing}", "missing", RUN, ["--similarity", "unet"]),
            ("--device", "bogus", "--device", PARSE),
            ("--ums", "all", "--ums", PARSE),
        ],
    ),
    "sweep": (
        ["--num-images", "2", "--pipeline", "{pipe}", "--output", "{out}"],
        [
            ("--method", "uncond", "--method", PARSE),
            ("--guidance-scales", "1,x", "--guidance-scales", PARSE),
            ("--num-images", "0", "--num-images", PARSE),
            ("--reference", "{missing}", "missing", RUN),
            ("--similarity", "{missing}.pt", "does not exist", RUN),
            ("--classifier", "{missing}", "missing", RUN),
            ("--exemplars", "{missing}", "missing", RUN, ["--method", "side-exemplar"]),
            ("--target-selection", "top2", "--target-selection", PARSE),
            ("--guidance-window", "9:1", "--guidance-window", PARSE),
            ("--guidance-space", "x1", "--guidance-space", PARSE),
            ("--guidance-space", "x0", "guidance_space='x0'", RUN, ["--method", "side-exemplar"]),
            ("--restart-strength", "-1", "--restart-strength", PARSE),
            *GENERATION_ROWS,
        ],
    ),
    "demo": (
        ["--quick", "--output", "{out}"],
        [
            ("--output", "{file}", "is a file", RUN),
            ("--preset", "bogus", "--preset", PARSE),
            ("--sweep-criterion", "bogus", "--sweep-criterion", PARSE),
            ("--preset", "paper", "--quick and --preset paper contradict", RUN),
            ("--pipeline", "{missing}", "missing", RUN),
            ("--reference", "{missing}", "missing", RUN),
            ("--guidance-scale", "nan", "--guidance-scale", PARSE),
            ("--num-images", "0", "--num-images", PARSE),
            ("--seed", "-1", "--seed", PARSE),
            ("--scheduler", "heun2", "invalid choice: 'heun2'", PARSE),
            ("--classifier-size", "huge", "--classifier-size", PARSE),
            ("--sweep-guidance-scales", "1,x", "--sweep-guidance-scales", PARSE),
            ("--selection-num-images", "0", "--selection-num-images", PARSE),
        ],
    ),
    "canary make": (
        ["--num-canaries", "2", "--output", "{out}"],
        [
            ("--num-canaries", "0", "--num-canaries", PARSE),
            ("--output", "{file}", "is a file", RUN),
            ("--images", "{missing}", "missing", RUN),
            ("--trigger-length", "2", "--trigger-length 2 must be an integer >= 4", RUN),
            ("--alphabet", "aa", "alphabet='aa' must hold at least 2 distinct", RUN),
            ("--resolution", "0", "--resolution", PARSE),
            ("--channels", "2", "--channels", PARSE),
            ("--seed", "-1", "--seed", PARSE),
        ],
    ),
    "canary audit": (
        ["--pipeline", "{pipe}", "--canaries", "{canaries}", "--output", "{out}"],
        [
            ("--pipeline", "{missing}", "missing", RUN),
            ("--canaries", "{file}", "holds no canary_key.json", RUN),
            ("--output", "{file}", "is a file", RUN),
            ("--num-controls", "0", "--num-controls", PARSE),
            ("--images-per-trigger", "0", "--images-per-trigger", PARSE),
            ("--similarity", "cosine", "--similarity", PARSE),
            ("--bands", "high:0", "high:0", RUN),
            ("--num-inference-steps", "0", "--num-inference-steps", PARSE),
            ("--guidance-scale", "nan", "--guidance-scale", PARSE),
            ("--batch-size", "0", "--batch-size", PARSE),
            ("--seed", "-1", "--seed", PARSE),
        ],
    ),
    "push": (
        ["{synthetic}", "--repo", "me/candidates"],
        [
            ("folder", "{missing}", "missing", RUN),
            ("--repo", "not a repo id!", "not a repo id!", RUN),
        ],
    ),
}
# Flags whose every value is acceptable to check locally: a token is only checked by the Hub when used.
EXEMPT = {"train-classifier": {"--hub_token"}, "train-lora": {"--hub_token"}, "push": {"--token"}}

ROWS = [(command, *row[:4], row[4] if len(row) > 4 else []) for command, (_, rows) in TABLE.items() for row in rows]


def build_argv(command: str, flag: str, value: str, extra: list, paths: dict) -> list[str]:
    base = list(TABLE[command][0])
    if not flag.startswith("-"):  # the positional argument
        base[0] = value
    elif flag in base:
        base[base.index(flag) + 1] = value
    else:
        base += [flag, value]
    return [*command.split(), *(a.format(**paths) for a in [*base, *extra])]  # "canary audit": a nested subcommand


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad-input")
    pipe = save_side_pipeline(root / "pipe")
    reference = root / "reference"
    reference.mkdir()
    for index, image in enumerate(smooth_images(4, seed=1)):
        image.save(reference / f"{index}.png")
    synthetic = write_generation_dir(root / "synthetic", smooth_images(6), pipeline=str(pipe))
    (root / "a-file").write_text("")
    study = {"pipeline": str(pipe), "reference": str(reference), "configurations": [{"name": "u", "method": "uncond"}]}
    (root / "study.json").write_text(json.dumps(study))
    make_canaries(root / "canaries", 2, resolution=8)
    return {"canaries": root / "canaries", "pipe": pipe, "synthetic": synthetic, "labels": write_labels(root / "labels"), "reference": reference,
            "file": root / "a-file", "study": root / "study.json", "missing": root / "missing", "out": root / "out"}  # "out" is never created


def leaf_subcommands() -> dict:
    """Every subcommand's parser, a nested one (``side canary audit``) under its two-word name."""
    top = next(a for a in build_parser()._actions if a.choices and "extract" in a.choices).choices
    leaves = {}
    for command, parser in top.items():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        leaves |= {f"{command} {name}": sub for name, sub in nested[0].choices.items()} if nested else {command: parser}
    return leaves


def test_the_table_covers_every_flag_of_every_subcommand():
    subparsers = leaf_subcommands()
    assert set(subparsers) == set(TABLE)
    for command, parser in subparsers.items():
        takes_value = {a.option_strings[0] if a.option_strings else a.dest for a in parser._actions if a.nargs != 0}
        covered = {row[0] for row in TABLE[command][1]} | EXEMPT.get(command, set())
        assert takes_value == covered, command


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("command, flag, value, fragment, where, extra", ROWS, ids=[f"{r[0]} {r[1]}" for r in ROWS])
def test_bad_value_is_one_line_exit_2_before_any_model_loads(paths, tmp_path, capsys, command, flag, value, fragment, where, extra):
    paths = {**paths, "out": tmp_path / "out"}
    argv = build_argv(command, flag, value, extra, paths)
    try:
        code = side(argv)
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert code == 2 and "Traceback" not in err, err
    assert errors == [err.strip().splitlines()[-1]] and errors[0].startswith(f"side {command}: error:"), err
    assert fragment.format(**paths) in errors[0], errors[0]
    assert not paths["out"].exists() or not any(paths["out"].iterdir())


def test_parser_checks_import_neither_torch_nor_diffusers(paths):
    argvs = [build_argv(command, flag, value, extra, paths) for command, flag, value, _, where, extra in ROWS if where == PARSE]
    code = (
        "import json, sys\nfrom diffusers_side.cli import main\ncodes = []\n"
        f"for argv in json.loads({json.dumps(json.dumps(argvs))}):\n"
        "    try:\n        main(argv)\n    except SystemExit as exit:\n        codes.append(exit.code)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'datasets', 'transformers', 'accelerate') if m in sys.modules]\n"
        "print('CODES', sorted(set(codes)), len(codes), 'HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert f"CODES [2] {len(argvs)} HEAVY []" in result.stdout, result.stdout + result.stderr[-2000:]



def test_light_name_lists_match_the_libraries():
    from diffusers.optimization import SchedulerType

    from diffusers_side.models.classifier import RESNET_LAYOUTS
    from diffusers_side.pipelines.loading import SCHEDULERS
    from diffusers_side.training.arguments import CLASSIFIER_LAYERS, LR_SCHEDULERS
    from diffusers_side.utils.arg_types import SCHEDULER_NAMES

    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType} - {"piecewise_constant"}
    assert set(CLASSIFIER_LAYERS) == set(RESNET_LAYOUTS)
    assert tuple(SCHEDULERS) == SCHEDULER_NAMES
