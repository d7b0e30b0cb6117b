"""`side divergence` and `side query-only` through the command line, on tiny models: their folders, their records,
and bad input refused before any model loads."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMScheduler

from conftest import make_tiny_unet
from diffusers_side import SIDEPipeline, TimeDependentClassifier
from diffusers_side.cli import main as side
from diffusers_side.storage.data import load_image_dataset
from diffusers_side.storage.outputs import folder_kind


def image_folder(path, count: int, seed: int):
    path.mkdir(parents=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(count, 8, 8), dtype=np.uint8)
    for i, image in enumerate(pixels):
        PIL.Image.fromarray(image, mode="L").save(path / f"{i:03d}.png")
    return str(path)


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    pipeline = tmp_path / "pipe"
    SIDEPipeline(make_tiny_unet(sample_size=8), DDPMScheduler(num_train_timesteps=100)).save_pretrained(pipeline)
    classifier = tmp_path / "classifier"
    TimeDependentClassifier(in_channels=1, sample_size=8, num_classes=3, base_channels=4).save_pretrained(classifier)
    return {
        "pipeline": str(pipeline), "classifier": str(classifier), "reference": image_folder(tmp_path / "reference", 4, 0),
        "holdout": image_folder(tmp_path / "holdout", 4, 1), "tmp": tmp_path,
    }


def test_divergence_command_writes_its_record_and_report(tiny):
    output = tiny["tmp"] / "divergence"
    argv = ["divergence", "--pipeline", tiny["pipeline"], "--reference", tiny["reference"], "--holdout", tiny["holdout"],
            "--num-samples", "2", "--batch-size", "2", "--rtol", "0.01", "--atol", "0.01", "--output", str(output)]
    assert side(argv) == 0
    record = json.loads((output / "divergence.json").read_text())
    result = record["result"]
    assert result["train"]["num_images"] == 4 and result["holdout"]["num_samples"] == 2
    assert result["gap"] == pytest.approx(result["holdout"]["value"] - result["train"]["value"])
    assert record["settings"]["holdout"] == tiny["holdout"] and "M train:" in (output / "report.md").read_text()
    assert folder_kind(output) == "divergence"
    assert side(argv) == 0, "a re-run refreshes its own folder"


def test_query_only_command_writes_every_query_for_side_evaluate(tiny):
    output = tiny["tmp"] / "query-only"
    argv = ["query-only", "--pipeline", tiny["pipeline"], "--classifier", tiny["classifier"], "--queries", "12",
            "--num-inference-steps", "2", "--num-best", "2", "--output", str(output)]
    assert side(argv) == 0
    images = load_image_dataset(output / "images")
    assert len(images) == 12 and sorted(set(images["target"])) == [0, 1, 2] and sum(images["best"]) == 6
    summary = json.loads((output / "query_only.json").read_text())
    assert summary["num_queries"] == 12 and summary["settings"]["num_targets"] == 3
    assert summary["mean_best_fitness"] >= summary["mean_fitness"]
    evaluation = tiny["tmp"] / "eval"
    assert side(["evaluate", "--generated", str(output / "images"), "--reference", tiny["reference"], "--output", str(evaluation)]) == 0
    report = json.loads((evaluation / "report.json").read_text())
    assert set(report["methods"]) == {"query-only"} and report["methods"]["query-only"]["num_generations"] == 12


@pytest.mark.parametrize(
    "argv, message",
    [
        (["divergence", "--reference", "REF", "--holdout", "embedded", "--pipeline", "PIPE"], "--holdout embedded takes an embedded"),
        (["divergence", "--reference", "REF", "--output", "PIPE"], "holds a diffusers pipeline"),
        (["query-only", "--classifier", "nowhere", "--queries", "4"], "--classifier nowhere is not a folder"),
        (["query-only", "--classifier", "CLS", "--queries", "4", "--output", "PIPE"], "holds a diffusers pipeline"),
    ],
)
def test_bad_input_is_refused_before_any_model_loads(tiny, capsys, monkeypatch, argv, message):
    import diffusers_side.pipelines.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the model loaded before the check"))
    values = {"REF": tiny["reference"], "PIPE": tiny["pipeline"], "CLS": tiny["classifier"]}
    argv = [values.get(a, a) for a in argv]
    if "--output" not in argv:
        argv += ["--output", str(tiny["tmp"] / "out")]
    assert side(argv) == 2
    assert message in capsys.readouterr().err
