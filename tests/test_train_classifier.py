"""training/train_classifier.py: learns an easy task, saves a SIDEPipeline, resumes exactly, rejects bad input."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from conftest import launch_two_processes
from diffusers_side import SIDEPipeline, cli
from diffusers_side.labels.surrogate_labels import SurrogateLabels
from diffusers_side.training import common
from diffusers_side.training.classifier import classification_loss, classifier_training_args, parse_args, train_classifier
from diffusers_side.utils.atomic_io import write_json_atomic

SCRIPT = Path(__file__).parents[1] / "training" / "train_classifier.py"
CLASSIFIER_WEIGHTS = "classifier/diffusion_pytorch_model.safetensors"
NUM_CLASSES = 3
FAST = ["--base_channels", "8", "--train_batch_size", "8", "--learning_rate", "1e-3", "--lr_scheduler", "constant"]


def easy_images(num_images: int, size: int = 16) -> tuple[list[PIL.Image.Image], list[int]]:
    """Three visually distinct classes: the left, right or top half is bright, on a noisy background."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for index in range(num_images):
        label = index % NUM_CLASSES
        pixels = rng.uniform(0, 60, (size, size))
        half = size // 2
        region = [np.s_[:, :half], np.s_[:, half:], np.s_[:half, :]][label]
        pixels[region] += 180
        images.append(PIL.Image.fromarray(pixels.astype(np.uint8), mode="L"))
        labels.append(label)
    return images, labels


def surrogate_labels() -> SurrogateLabels:
    """A sidecar as `side label` writes it: K = 5 clusters of which 3 are kept."""
    return SurrogateLabels(
        centroids=torch.eye(NUM_CLASSES, 4),
        feature_mean=torch.zeros(4),
        kept_cluster_ids=[0, 2, 4],
        cluster_sizes=[20, 4, 20, 3, 20],
        cohesion=[0.91, 0.2, 0.87, 0.1, 0.95],
        label_counts=[20, 20, 20],
        extractor="unet",
        num_clusters=5,
        cohesion_threshold="auto",
        resolved_cohesion_threshold=0.55,
        min_cluster_size=2,
        num_synthetic=67,
        seed=0,
    )


def make_labelled_data(path: Path, num_images: int = 48, labels: list | None = None, sidecar: bool = True) -> Path:
    images, easy_labels = easy_images(num_images)
    features = Features(
        {"image": Image(), "label": Value("int64"), "distance": Value("float32"), "seed": Value("int64")}
    )
    columns = {"image": images, "label": labels or easy_labels, "distance": [0.1] * num_images}
    columns["seed"] = list(range(num_images))
    Dataset.from_dict(columns, features=features).save_to_disk(str(path))
    if sidecar:
        surrogate_labels().save(path)
    return path


def run_args(target: Path, data: Path, output: Path, *extra: str) -> list[str]:
    paths = ["--pretrained_model_name_or_path", str(target), "--train_data_dir", str(data)]
    return [*paths, "--output_dir", str(output), *FAST, *extra]


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """A tiny untrained DDPM pipeline folder (1x16x16, 100 diffusion steps) standing in for the audited model."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    path = tmp_path_factory.mktemp("target") / "ddpm"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return make_labelled_data(tmp_path_factory.mktemp("labels") / "labels")


def test_learns_an_easy_task_and_saves_a_side_pipeline(target, labelled, tmp_path):
    output = tmp_path / "side"
    argv = run_args(target, labelled, output, "--max_train_steps", "40", "--validation_split", "0.25")
    train_classifier(parse_args(argv))

    log = json.loads((output / "train_log.json").read_text())
    assert log["evaluated_on"] == "12 held-out images"
    assert log["evaluation"]["q0"]["accuracy"] >= 0.9 and log["evaluation"]["q0"]["timesteps"] == [0, 24]
    assert {"acc_q0", "loss_q0", "acc_q3", "loss_q3"} <= set(log["history"][-1])

    pipeline = SIDEPipeline.from_pretrained(output)
    assert pipeline.classifier.config.time_dependent and pipeline.classifier.config.num_classes == NUM_CLASSES
    assert pipeline.classifier.config.label_info == surrogate_labels().to_label_info()
    target_unet = load_file(str(target / "unet/diffusion_pytorch_model.safetensors"))
    saved_unet = load_file(str(output / "unet/diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(target_unet[k], saved_unet[k]) for k in target_unet)
    images = pipeline(batch_size=2, target=[0, 1], guidance_scale=1.0, num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, 1, 16, 16)

    card = ModelCard.load(output / "README.md")
    assert "side" in card.data.tags and card.data.library_name == "diffusers"
    for text in ("| K (KMeans clusters) | 5 |", "| N_syn (synthetic images) | 67 |", "auto (applied: 0.55)",
                 "ids `0,2,4`", "0.91, 0.87, 0.95", "`unet`", "time module on"):
        assert text in card.text, text
    assert f"| x_t, quartile 0 | 0..24 | {log['evaluation']['q0']['accuracy']:.3f} |" in card.text
    assert "python training/train_classifier.py " + " ".join(argv) in card.text


def test_time_independent_classifier_sees_clean_images_only(target, labelled, tmp_path):
    seen = []

    def model(sample, timestep=None):
        seen.append((sample, timestep))
        return torch.zeros(sample.shape[0], NUM_CLASSES, requires_grad=True)

    batch = {common.PIXEL_VALUES: torch.rand(4, 1, 16, 16) * 2 - 1, "label": torch.tensor([0, 1, 2, 0])}
    scheduler = DDPMScheduler(num_train_timesteps=100)
    for time_dependent in (False, True):
        generator = torch.Generator().manual_seed(0)
        output = classification_loss(model, batch, generator, scheduler, "label", time_dependent, random_flip=False)
        assert ("acc_q0" in output.metrics) == time_dependent
    (clean, no_time), (noisy, timesteps) = seen
    assert no_time is None and torch.equal(clean, batch[common.PIXEL_VALUES])
    assert timesteps.shape == (4,) and not torch.allclose(noisy, batch[common.PIXEL_VALUES])

    output = tmp_path / "cond"
    train_classifier(parse_args(run_args(target, labelled, output, "--max_train_steps", "2", "--time_independent")))
    pipeline = SIDEPipeline.from_pretrained(output)
    assert not pipeline.classifier.config.time_dependent
    card = ModelCard.load(output / "README.md")
    assert "carlini-cond" in card.data.tags and "**time-independent** classifier" in card.text


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(target, labelled, tmp_path):
    shared = ["--checkpointing_steps", "2", "--random_flip"]
    train_classifier(parse_args(run_args(target, labelled, tmp_path / "split", *shared, "--max_train_steps", "4")))
    resume = ["--max_train_steps", "7", "--resume_from_checkpoint", "latest"]
    train_classifier(parse_args(run_args(target, labelled, tmp_path / "split", *shared, *resume)))
    train_classifier(parse_args(run_args(target, labelled, tmp_path / "whole", *shared, "--max_train_steps", "7")))

    resumed = load_file(str(tmp_path / "split" / CLASSIFIER_WEIGHTS))
    whole = load_file(str(tmp_path / "whole" / CLASSIFIER_WEIGHTS))
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)  # includes the BatchNorm running statistics
    log = json.loads((tmp_path / "split" / "train_log.json").read_text())
    assert log["global_step"] == 7 and log["resumed_from"].endswith("checkpoint-4")


@pytest.mark.multiprocess
def test_two_processes_with_accelerate_launch(target, labelled, tmp_path):
    output = tmp_path / "ddp"
    args = run_args(target, labelled, output, "--max_train_steps", "3", "--checkpointing_steps", "2")
    result = launch_two_processes(str(SCRIPT), *args)
    assert result.returncode == 0, result.stderr[-3000:]

    assert len(list((output / "checkpoint-2").glob("random_states_*.pkl"))) == 2
    assert json.loads((output / "train_log.json").read_text())["global_step"] == 3
    assert "batch 16 (8 per process x 2 processes x 1 accumulation)" in (output / "README.md").read_text()
    assert SIDEPipeline.from_pretrained(output).classifier is not None


def test_cli_subcommand_runs_the_script(target, labelled, tmp_path, capsys):
    output = tmp_path / "via-cli"
    assert cli.main(["train-classifier", *run_args(target, labelled, output, "--max_train_steps", "1")]) == 0
    assert "[side] train-classifier done" in capsys.readouterr().out
    assert SIDEPipeline.from_pretrained(output).classifier.config.num_classes == NUM_CLASSES

    bad = run_args(target, labelled, tmp_path / "bad", "--resolution", "32")
    assert cli.main(["train-classifier", *bad]) == 2
    assert "--resolution 32 differs from the target's resolution 16" in capsys.readouterr().err


@pytest.mark.parametrize(
    "labels, sidecar, extra, message",
    [
        ([0, 1, 3] * 16, True, [], r"Labels must lie in \[0, 3\) but column 'label' ranges over \[0, 3\]"),
        ([0, 1, -1] * 16, False, [], r"ranges over \[-1, 1\]"),
        ([0] * 48, False, [], "at least 2 labels"),
        (None, False, ["--label_column", "cluster"], r"no label column 'cluster'; it has columns \['image', 'label'"),
        (None, True, ["--num_classes", "4"], "--num_classes 4 contradicts the 3 labels"),
        (None, True, ["--channels", "3"], "--channels 3 differs from the target's channels 1"),
        (None, True, ["--validation_split", "1"], r"--validation_split must be in \[0, 1\)"),
    ],
)
def test_bad_labels_and_flags_fail_before_training(target, tmp_path, labels, sidecar, extra, message):
    data = make_labelled_data(tmp_path / "data", labels=labels, sidecar=sidecar)
    with pytest.raises(ValueError, match=message):
        train_classifier(parse_args(run_args(target, data, tmp_path / "out", *extra)))
    assert not (tmp_path / "out").exists()


def test_data_without_image_column_and_foreign_output_dir(target, labelled, tmp_path):
    Dataset.from_dict({"pixels": [[0]], "label": [0]}).save_to_disk(str(tmp_path / "no-image"))
    with pytest.raises(ValueError, match=r"no image column; it has columns \['pixels', 'label'\]"):
        train_classifier(parse_args(run_args(target, tmp_path / "no-image", tmp_path / "out")))

    output = tmp_path / "dpm-run"
    output.mkdir()
    write_json_atomic(output / common.RUN_CONFIG_NAME, {"script": "train_dpm"})
    with pytest.raises(ValueError, match="holds a different run"):
        train_classifier(parse_args(run_args(target, labelled, output, "--resume_from_checkpoint", "latest")))


def test_keyword_flags_equal_the_parsed_command_line(tmp_path):
    argv = ["--train_data_dir", "labels", "--output_dir", str(tmp_path), "--max_train_steps", "3", "--time_independent"]
    built = classifier_training_args(train_data_dir="labels", output_dir=str(tmp_path), max_train_steps=3, time_independent=True)
    assert vars(built) == vars(parse_args(argv))
    with pytest.raises(ValueError, match=r"Unknown training flag\(s\) \['max_steps'\]; choose from \[.*'max_train_steps'"):
        classifier_training_args(output_dir=str(tmp_path), max_steps=3)


def test_same_command_gives_the_same_weights_with_one_or_two_threads(target, labelled, tmp_path):
    """Reductions split across threads change the last bits of every step (with --torch_threads 0 the two runs
    differ); training pins the thread count, so the caller's count does not matter."""
    weights = []
    threads = torch.get_num_threads()
    try:
        for caller_threads in (2, 1):
            torch.set_num_threads(caller_threads)
            output = tmp_path / f"threads-{caller_threads}"
            argv = run_args(target, labelled, output, "--max_train_steps", "12", "--base_channels", "16",
                            "--train_batch_size", "32")
            train_classifier(parse_args(argv))
            assert torch.get_num_threads() == caller_threads  # restored
            weights.append(load_file(str(output / CLASSIFIER_WEIGHTS)))
    finally:
        torch.set_num_threads(threads)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
