"""training/train_dpm.py: a few steps on tiny data, exact resume after SIGKILL, two processes, bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from diffusers import DDPMPipeline
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file

from conftest import launch_two_processes, subprocess_env
from diffusers_side import SIDEPipeline
from diffusers_side.training import common
from diffusers_side.training.dpm import parse_args, train_dpm

SCRIPT = Path(__file__).parents[1] / "training" / "train_dpm.py"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
# A two-level UNet on 8x8 images with 50 diffusion steps and a 2-image, 2-step sample grid.
TINY = ["--block_out_channels", "8,16", "--ddpm_num_steps", "50"]
TINY += ["--eval_batch_size", "2", "--ddpm_num_inference_steps", "2"]


def make_dataset(path: Path, num_images: int = 12, size: int = 8, mode: str = "L") -> Path:
    """A save_to_disk data set of random images with an `image` column and a distractor column."""
    rng = np.random.default_rng(0)
    shape = (size, size) if mode == "L" else (size, size, 3)
    images = [PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode) for _ in range(num_images)]
    features = Features({"image": Image(), "index": Value("int64")})
    Dataset.from_dict({"image": images, "index": list(range(num_images))}, features=features).save_to_disk(str(path))
    return path


def run_args(data: Path, output: Path, *extra: str) -> list[str]:
    return ["--train_data_dir", str(data), "--output_dir", str(output), "--train_batch_size", "4", *TINY, *extra]


def unet_weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / UNET_WEIGHTS))


@pytest.fixture(scope="module")
def gray_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "gray")


def test_trains_and_writes_a_loadable_pipeline_with_card(gray_data, tmp_path):
    output = tmp_path / "ddpm"
    argv = run_args(gray_data, output, "--max_train_steps", "5", "--checkpointing_steps", "2", "--random_flip")
    argv += ["--checkpoints_total_limit", "1"]
    train_dpm(parse_args(argv))

    log = json.loads((output / "train_log.json").read_text())
    assert log["global_step"] == 5 and np.isfinite(log["final_loss"])
    assert [p.name for p in output.iterdir() if "checkpoint" in p.name] == ["checkpoint-4"]
    pipeline = DDPMPipeline.from_pretrained(output)
    assert pipeline.unet.config.in_channels == 1 and pipeline.unet.config.sample_size == 8
    assert pipeline.scheduler.config.num_train_timesteps == 50
    assert SIDEPipeline.from_pretrained(output).classifier is None
    assert (output / UNET_WEIGHTS).is_file() and not list(output.glob("unet/*.bin"))
    grid = PIL.Image.open(output / "samples.png")
    assert grid.size == (8 * 2, 8)  # two 8x8 samples side by side

    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "diffusers" and "unconditional-image-generation" in card.data.tags
    assert str(gray_data) in card.text and "8 x 8" in card.text and "5 steps" in card.text
    assert f"{log['final_loss']:.5f}" in card.text
    assert "python training/train_dpm.py " + " ".join(argv) in card.text


def test_rgb_data_bf16_and_channel_override(tmp_path):
    data = make_dataset(tmp_path / "rgb", num_images=4, mode="RGB")
    bf16 = ["--max_train_steps", "1", "--no-use_ema", "--mixed_precision", "bf16"]
    train_dpm(parse_args(run_args(data, tmp_path / "rgb-out", *bf16)))
    assert DDPMPipeline.from_pretrained(tmp_path / "rgb-out").unet.config.in_channels == 3
    assert "mixed precision `bf16`" in (tmp_path / "rgb-out" / "README.md").read_text()
    train_dpm(parse_args(run_args(data, tmp_path / "gray-out", "--max_train_steps", "1", "--channels", "1")))
    assert DDPMPipeline.from_pretrained(tmp_path / "gray-out").unet.config.in_channels == 1


def test_sigkill_then_resume_matches_an_uninterrupted_run(gray_data, tmp_path, single_thread):
    """Kill a run with SIGKILL after its first checkpoint; resuming must end with the same weights."""
    # Constant lr: the schedule does not depend on the total step count, so the killed run can be
    # started with a large --max_train_steps and finished with the one the reference uses.
    shared = ["--checkpointing_steps", "2", "--lr_scheduler", "constant", "--random_flip"]
    shared += ["--gradient_accumulation_steps", "2"]
    killed = tmp_path / "killed"
    command = [sys.executable, str(SCRIPT), *run_args(gray_data, killed, *shared, "--max_train_steps", "1000")]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not common.list_checkpoints(killed) and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    latest = common.list_checkpoints(killed)[-1]
    checkpoint_step = json.loads((latest / common.TRAINING_STATE_NAME).read_text())["global_step"]
    assert not (killed / "model_index.json").exists()  # it really died mid-run
    total = str(checkpoint_step + 3)  # an odd total: the resumed run ends between two checkpoints

    resume = run_args(gray_data, killed, *shared, "--max_train_steps", total, "--resume_from_checkpoint", "latest")
    subprocess.run([sys.executable, str(SCRIPT), *resume], env=subprocess_env(), check=True, capture_output=True)
    train_dpm(parse_args(run_args(gray_data, tmp_path / "reference", *shared, "--max_train_steps", total)))

    resumed_log = json.loads((killed / "train_log.json").read_text())
    reference_log = json.loads((tmp_path / "reference" / "train_log.json").read_text())
    assert resumed_log["global_step"] == reference_log["global_step"] == int(total)
    assert resumed_log["resumed_from"] == str(latest)
    assert [h["step"] for h in resumed_log["history"]] == [h["step"] for h in reference_log["history"]]
    resumed, reference = unet_weights(killed), unet_weights(tmp_path / "reference")
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)


@pytest.mark.multiprocess
def test_two_processes_with_accelerate_launch(gray_data, tmp_path):
    output = tmp_path / "ddp"
    args = run_args(gray_data, output, "--max_train_steps", "3", "--checkpointing_steps", "2")
    result = launch_two_processes(str(SCRIPT), *args)
    assert result.returncode == 0, result.stderr[-3000:]

    checkpoint = output / "checkpoint-2"
    random_states = sorted(p.name for p in checkpoint.glob("random_states_*.pkl"))
    assert random_states == ["random_states_0.pkl", "random_states_1.pkl"]
    assert json.loads((output / "train_log.json").read_text())["global_step"] == 3
    card = (output / "README.md").read_text()
    assert "batch 8 (4 per process x 2 processes x 1 accumulation)" in card
    assert "accelerate launch --num_processes 2 training/train_dpm.py" in card
    DDPMPipeline.from_pretrained(output)


def test_push_to_hub_uploads_the_folder_without_checkpoints(gray_data, tmp_path, monkeypatch):
    calls = {}

    class Repo:
        repo_id = "someone/tiny-ddpm"

    def fake_create_repo(repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return Repo()

    def fake_upload_folder(**kwargs):
        calls["upload"] = kwargs
        folder = Path(kwargs["folder_path"])
        files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
        calls["files"] = list(filter_repo_objects(files, ignore_patterns=kwargs["ignore_patterns"]))
        return "https://huggingface.co/someone/tiny-ddpm/commit/0"

    monkeypatch.setattr("huggingface_hub.create_repo", fake_create_repo)
    monkeypatch.setattr("huggingface_hub.upload_folder", fake_upload_folder)
    output = tmp_path / "pushed"
    hub = ["--push_to_hub", "--hub_model_id", "someone/tiny-ddpm", "--hub_token", "hf_secret"]
    train_dpm(parse_args(run_args(gray_data, output, "--max_train_steps", "2", "--checkpointing_steps", "1", *hub)))

    assert calls["create"][0] == "someone/tiny-ddpm"
    assert calls["upload"]["repo_id"] == "someone/tiny-ddpm" and Path(calls["upload"]["folder_path"]) == output
    assert "README.md" in calls["files"] and UNET_WEIGHTS in calls["files"] and "samples.png" in calls["files"]
    assert not [f for f in calls["files"] if f.startswith("checkpoint-")]
    card = (output / "README.md").read_text()
    assert 'DDPMPipeline.from_pretrained("someone/tiny-ddpm")' in card
    assert "--hub_token '***'" in card and "hf_secret" not in card + (output / common.RUN_CONFIG_NAME).read_text()
    assert calls["upload"]["token"] == "hf_secret"


def test_output_dir_holding_another_run_is_refused_before_training(gray_data, tmp_path):
    output = tmp_path / "run"
    train_dpm(parse_args(run_args(gray_data, output, "--max_train_steps", "2", "--checkpointing_steps", "1")))
    before = unet_weights(output)

    with pytest.raises(FileExistsError, match="--resume_from_checkpoint latest"):
        train_dpm(parse_args(run_args(gray_data, output, "--max_train_steps", "2")))
    with pytest.raises(ValueError, match=r"different run \(learning_rate: 0.0001 -> 0.001"):
        train_dpm(parse_args(run_args(gray_data, output, "--learning_rate", "1e-3", "--resume_from_checkpoint", "latest")))
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no training run"):
        train_dpm(parse_args(run_args(gray_data, stranger, "--max_train_steps", "1")))
    assert all(torch.equal(before[k], v) for k, v in unet_weights(output).items())

    train_dpm(parse_args(run_args(gray_data, output, "--max_train_steps", "1", "--overwrite_output_dir")))
    assert [p.name for p in common.list_checkpoints(output)] == []
    assert json.loads((output / "train_log.json").read_text())["global_step"] == 1


def test_resume_latest_without_checkpoints_starts_fresh(gray_data, tmp_path):
    resume = ["--max_train_steps", "1", "--resume_from_checkpoint", "latest"]
    train_dpm(parse_args(run_args(gray_data, tmp_path / "fresh", *resume)))
    assert json.loads((tmp_path / "fresh" / "train_log.json").read_text())["resumed_from"] is None


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--block_out_channels", "8,8,8,8,8"], ValueError, "not divisible by 16"),
        (["--down_block_types", "DownBlock2D"], ValueError, "--down_block_types has 1 entries"),
        (["--norm_num_groups", "3"], ValueError, "--norm_num_groups 3 must divide"),
        (["--down_block_types", "DownBlock2D,NoSuchBlock2D"], ValueError, "NoSuchBlock2D does not exist"),
        (["--train_batch_size", "0"], SystemExit, "2"),  # refused by the parser (exit status 2)
        (["--push_to_hub"], ValueError, "--push_to_hub needs --hub_model_id"),
        (["--resume_from_checkpoint", "nowhere"], FileNotFoundError, "not a checkpoint directory"),
        (["--report_to", "no-such-tracker"], ValueError, "--report_to no-such-tracker: not installed"),
    ],
)
def test_bad_flags_fail_before_training(gray_data, tmp_path, extra, error, message):
    with pytest.raises(error, match=message):
        train_dpm(parse_args(run_args(gray_data, tmp_path / "out", *extra)))
    assert not (tmp_path / "out").exists()


def test_data_without_image_column_lists_its_columns(tmp_path):
    Dataset.from_dict({"pixels": [[0, 1]], "caption": ["x"]}).save_to_disk(str(tmp_path / "no-image"))
    with pytest.raises(ValueError, match=r"no image column; it has columns \['pixels', 'caption'\]"):
        train_dpm(parse_args(run_args(tmp_path / "no-image", tmp_path / "out")))
    with pytest.raises(ValueError, match="exactly one of --dataset_name"):
        train_dpm(parse_args(["--dataset_name", "default", *run_args(tmp_path / "no-image", tmp_path / "out")]))


def test_card_templates_resolve_and_unknown_names_list_the_available_ones():
    from diffusers_side.storage.cards import template_path

    assert template_path("train_dpm") == template_path("train_dpm.md")
    with pytest.raises(FileNotFoundError, match=r"the available templates are \[.*'train_classifier', 'train_dpm'"):
        template_path("no_such_card")
