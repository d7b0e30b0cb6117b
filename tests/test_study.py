"""`side study`: config validation, cost accounting, intervals, and one engine with `side extract`."""

import json
import shlex
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler

from conftest import make_tiny_unet
from diffusers_side import SIDEPipeline
from diffusers_side.cli import main as side
from diffusers_side.evaluation.intervals import distinct_interval, pooled_distinct_interval, wilson_interval
from diffusers_side.storage.data import load_image_dataset
from diffusers_side.workflows.costs import CostLedger, budget, unet_evaluations
from diffusers_side.workflows.study import Study, run_study
from diffusers_side.workflows.study_config import StudyConfig, load_study_config
from diffusers_side.workflows.study_report import read_matches


def payload(**overrides) -> dict:
    values = {
        "pipeline": "default", "reference": "default",
        "inputs": {"num_synthetic": 24, "num_clusters": 3, "classifier_steps": 2, "num_inference_steps": 2, "scheduler": None},
        "selection": {"seed": 1, "num_images": 6}, "report": {"seed": 2, "num_images": 6},
        "num_inference_steps": 2, "batch_size": 8, "bootstrap_resamples": 50,
        "configurations": [{"name": "uncond", "method": "uncond"}, {"name": "exemplar", "method": "side-exemplar", "guidance_scale": 1.0}],
    }
    return {**values, **overrides}


BAD_CONFIGS = [
    ({"report": {"seed": 1, "num_images": 6}}, "The selection seed equals the report seed (1)"),
    ({"refrence": "x"}, "unknown key(s) ['refrence']"),
    ({"configurations": [{"name": "e", "method": "side-exemplar"}]}, "No 'uncond' configuration"),
    ({"configurations": [{"name": "u", "method": "uncond"}, {"name": "u", "method": "uncond"}]}, "'u' is used twice"),
    ({"configurations": [{"name": "u", "method": "uncond"}, {"name": "l", "method": "side-lora"}]}, "samples a LoRA model"),
    ({"configurations": [{"name": "a/b", "method": "uncond"}]}, "must be letters, digits"),
    ({"configurations": [{"name": "u", "method": "uncond"}, {"name": "synthetic", "method": "uncond"}]}, "'synthetic' is reserved"),
    ({"configurations": [{"name": "u", "method": "uncnd"}]}, "method 'uncnd' is not one of"),
    ({"configurations": [{"name": "u", "method": "uncond", "lambda": 2}]}, "configuration 0 has unknown key(s) ['lambda']"),
    ({"inputs": {"num_images": 5}}, "inputs ['num_images'] are not inputs of a study"),
    ({"selection": {"seed": 1}}, "'selection' lacks ['num_images']"),
    ({"candidate_ks": [0]}, "candidate_ks=[0] must be"),
    ({"report": {"seed": 2, "num_images": 6, "configurations": ["uncond", "exemplr"]}}, "unknown: ['exemplr']"),
    ({"report": {"seed": 2, "num_images": 6, "configurations": ["exemplar"]}}, "include an 'uncond' one"),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_configs_are_refused_with_the_value_and_the_fix(overrides, message):
    with pytest.raises(ValueError) as error:
        StudyConfig.from_dict(payload(**overrides)).validate()
    assert message in str(error.value)
    with pytest.raises(ValueError, match=r"lacks \['reference'\]"):
        StudyConfig.from_dict({"configurations": []})


STUDY_CONFIGS = sorted((Path(__file__).parents[1] / "docs" / "studies").glob("*.json"))


@pytest.mark.parametrize("path", STUDY_CONFIGS, ids=[p.stem for p in STUDY_CONFIGS])
def test_every_published_study_config_loads_and_validates(path):
    config = load_study_config(path)
    assert config.selection.seed != config.report.seed
    assert any(c.method == "uncond" for c in config.configurations)


def test_intervals():
    value, low, high = wilson_interval(10, 100)
    assert value == 0.1 and low == pytest.approx(0.0552, abs=1e-4) and high == pytest.approx(0.1744, abs=1e-4)
    assert wilson_interval(0, 50)[1] == 0.0
    best = np.array([1, 1, 2, 3, 4, 5, 6, 7] * 25)
    in_band = np.arange(200) % 3 == 0
    estimate, low, high = distinct_interval(in_band, best, resamples=200, seed=0)
    assert estimate == np.unique(best[in_band]).size / 200 and low < estimate < high
    assert distinct_interval(in_band, best, resamples=200, seed=0) == [estimate, low, high], "a fixed seed reproduces it"
    assert distinct_interval(np.zeros(5, bool), np.arange(5)) == [0.0, 0.0, 0.0]


def test_pooled_distinct_interval_counts_the_union_and_resamples_each_set_on_its_own():
    guided = (np.ones(100, bool), np.arange(100) % 10)  # images 0-9
    synthetic = (np.ones(300, bool), 5 + np.arange(300) % 10)  # images 5-14
    estimate, low, high = pooled_distinct_interval([guided, synthetic], resamples=200, seed=0)
    assert estimate == 15 / 400 and low <= estimate <= high
    assert pooled_distinct_interval([guided], resamples=200, seed=0) == distinct_interval(*guided, resamples=200, seed=0)
    with pytest.raises(ValueError, match=r"sizes \[\(3, 2\)\]"):
        pooled_distinct_interval([(np.ones(3, bool), np.arange(2))])


def test_cost_ledger_scales_a_resumed_stage_and_budget_gives_plain_sampling_the_larger_count(tmp_path):
    ledger = CostLedger(tmp_path / "costs.json")
    ledger.records = {
        "synthesize": {"cpu_seconds": 10.0, "wall_seconds": 11.0, **unet_evaluations(100, 10)},  # 0.01 s per UNet pass
        "label": {"cpu_seconds": 1.0, "wall_seconds": 1.0, "unet_evaluations": 100},
        "train": {"cpu_seconds": 20.0, "wall_seconds": 20.0},
    }
    record = ledger.measure("extract", lambda: sum(range(10**5)), done_before=0.75, **unet_evaluations(40, 10, "x0", guided=True))
    assert record["measured_fraction"] == 0.25 and record["unet_backward"] == 400
    assert json.loads((tmp_path / "costs.json").read_text())["extract"] == record
    ledger.records["extract"]["cpu_seconds"] = 4.0
    assert ledger.measure("extract", lambda: None, done_before=1.0)["cpu_seconds"] == 4.0, "a complete stage keeps its record"
    result = budget(ledger, ["synthesize", "label", "train", "extract"], plain_steps=10)
    assert result["cpu_seconds"] == 35.0 and result["unet_equivalents"] == 3500.0
    assert result["unet_evaluation_total"] == 1000 + 100 + 400 + 2 * 400
    assert result["plain_images"] == 350  # max(3500 / 10, 2300 / 10)
    with pytest.raises(ValueError, match=r"no cost record of \['other'\]"):
        budget(ledger, ["other"], 10)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    torch.manual_seed(0)
    SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=50)).save_pretrained(root / "pipe")
    (root / "reference").mkdir()
    generator = np.random.default_rng(0)
    for i in range(8):
        PIL.Image.fromarray(generator.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / "reference" / f"{i}.png")
    config = StudyConfig.from_dict(payload(pipeline=str(root / "pipe"), reference=str(root / "reference")))
    return root, config, run_study(config, root / "out", "report")


def test_study_charges_every_stage_and_extends_plain_sampling_to_the_budget(tiny_study):
    root, config, results = tiny_study
    exemplar, uncond = results["configurations"]["exemplar"], results["configurations"]["uncond"]
    cost = exemplar["budget"]
    assert sorted(cost["stages"]) == ["extract report/exemplar", "label", "synthesize"]
    assert cost["unet_evaluations"] == 24 * 2 + 24 + 6 * 2  # synthesis, UNet-feature labelling, guided sampling
    assert cost["plain_images"] >= cost["unet_evaluations"] // 2
    assert uncond["num_generated"] == max(6, cost["plain_images"]) and uncond["num_images"] == 6
    assert exemplar["equal_budget"]["uncond"]["num_images"] == cost["plain_images"]
    for row in (exemplar, uncond):
        for band, (value, low, high) in row["ams"].items():
            assert low <= value <= high, band
    assert exemplar["command"].startswith("side extract ") and "--exemplars" in exemplar["command"]
    assert "## At equal budget" in (root / "out" / "report" / "study.md").read_text()
    assert (root / "out" / "report" / "exemplar" / "candidates.parquet").is_file()
    # the synthetic set the budget paid for is counted with the guided generations: the union of their matches
    union = exemplar["with_synthetic"]
    assert union["num_images"] == 6 + 24 and "with_synthetic" not in results["configurations"]["uncond"]
    guided = read_matches(root / "out" / "report" / "exemplar-eval")
    synthetic = read_matches(root / "out" / "report" / "synthetic-eval")
    for band, (count, low, high) in union["distinct"].items():
        expected = set(guided["best_match"][guided["band"] == band]) | set(synthetic["best_match"][synthetic["band"] == band])
        assert count == len(expected) and low <= count <= high, band
    assert "exemplar + its synthetic set | 30 |" in (root / "out" / "report" / "study.md").read_text()


def regenerate(command: str, output) -> list:
    argv = shlex.split(command)[1:]
    argv[argv.index("--output") + 1] = str(output)
    assert side(argv) == 0
    return [np.asarray(image) for image in load_image_dataset(output)["image"]]


def test_every_study_folder_is_regenerated_by_its_side_extract_command(tiny_study, tmp_path):
    root, _, results = tiny_study
    for name in ("exemplar", "uncond"):
        row = results["configurations"][name]
        study_images = [np.asarray(image) for image in load_image_dataset(row["folder"])["image"]]
        assert all(np.array_equal(a, b) for a, b in zip(regenerate(row["command"], tmp_path / name), study_images, strict=True))
    # the equal-N_G plain run is the first N_G images of the extended one
    command = results["configurations"]["uncond"]["command"].replace(f"--num-images {results['configurations']['uncond']['num_generated']}", "--num-images 6")
    prefix = regenerate(command, tmp_path / "uncond-6")
    assert all(np.array_equal(a, b) for a, b in zip(prefix, study_images[:6], strict=True))


def test_a_resumed_study_changes_nothing_and_another_config_is_refused(tiny_study):
    root, config, results = tiny_study
    costs = (root / "out" / "costs.json").read_text()
    again = run_study(config, root / "out", "report")
    assert (root / "out" / "costs.json").read_text() == costs
    assert again["configurations"]["exemplar"]["distinct"] == results["configurations"]["exemplar"]["distinct"]
    other = StudyConfig.from_dict({**config.to_dict(), "bootstrap_resamples": 60})
    with pytest.raises(FileExistsError, match="holds a study with another config"):
        Study(other, root / "out", "report").check()


def test_cli_refuses_a_bad_config_in_one_line(tmp_path, capsys):
    (tmp_path / "study.json").write_text(json.dumps(payload(report={"seed": 1, "num_images": 6})))
    assert side(["study", str(tmp_path / "study.json"), "--phase", "report", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "selection seed equals the report seed" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_phase_runs_only_the_configurations_it_names(tiny_study, tmp_path):
    root, config, _ = tiny_study
    subset = StudyConfig.from_dict({**config.to_dict(), "selection": {"seed": 1, "num_images": 6, "configurations": ["uncond"]}})
    results = run_study(subset, tmp_path / "out", "selection")
    assert sorted(results["configurations"]) == ["uncond"]
    assert not (tmp_path / "out" / "selection" / "exemplar").exists()
