"""The `side` command line and `side demo --quick` on the embedded default model."""

import json
import subprocess
import sys

import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline
from test_reliability import no_model_loading  # noqa: F401 (fixture)

from diffusers_side import SIDEPipeline
from diffusers_side.cli import main as side
from diffusers_side.storage.embedded import DEFAULT_PIPELINE_DIR, load_training_subset, subset_indices


def test_embedded_default_loads_with_diffusers_and_side():
    side_pipe = SIDEPipeline.from_pretrained(DEFAULT_PIPELINE_DIR)
    ddpm = DDPMPipeline.from_pretrained(DEFAULT_PIPELINE_DIR, use_safetensors=True)
    for name, tensor in side_pipe.unet.state_dict().items():
        assert torch.equal(tensor, ddpm.unet.state_dict()[name]), name
    assert side_pipe.classifier is None
    assert (DEFAULT_PIPELINE_DIR / "README.md").exists()


def test_embedded_training_subset_is_the_recorded_one():
    subset = load_training_subset()
    assert subset["source_index"] == subset_indices()
    assert len(set(subset["source_index"])) == len(subset)
    assert subset[0]["image"].size == (16, 16) and subset[0]["image"].mode == "L"


def test_quick_demo_writes_report_for_every_method(tmp_path, capsys):
    assert side(["demo", "--quick", "--output", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    for stage in ("synthesize", "label", "train classifier-side", "train classifier-cond", "extract side", "extract uncond", "extract cond", "extract side-exemplar", "evaluate"):
        assert f"[side] {stage} done in" in out

    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert set(report["methods"]) == {"side", "uncond", "cond", "side-exemplar"}
    band_names = [band["name"] for band in report["bands"]]
    assert len(band_names) == 3
    for method in report["methods"].values():
        assert set(method["ams"]) == set(band_names) and set(method["ums"]) == set(band_names)
    markdown = (tmp_path / "demo" / "report.md").read_text()
    assert all(name in markdown for name in ("side", "uncond", "cond", "side-exemplar"))
    for figure in report["files"]["figures"].values():
        with PIL.Image.open(tmp_path / "demo" / figure) as image:
            assert image.format == "PNG" and image.size[0] > 0
    timings = json.loads((tmp_path / "demo" / "timings.json").read_text())
    assert timings["total"] >= timings["synthesize"] > 0 and timings["cpu_seconds"]["synthesize"] > 0
    # every extraction ends with its blind candidate list, scored and drawn in the report
    candidates = report["candidates"]
    assert {result["method"] for result in candidates.values()} == set(report["methods"])
    for source, result in candidates.items():
        assert (tmp_path / "demo" / result["figure"]).is_file() and result["num_generations"] == 12
        assert 0 <= result["at"]["10"]["precision"] <= 1 and (tmp_path / "demo" / source.split("/")[-1] / "candidates.png").is_file()
    assert "## Blind candidates" in markdown and "P@10 (%)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["extract", "--method", "side", "--num-images", "4", "--output", "{tmp}/x", "--pipeline", "{tmp}/missing"], "missing"),
        (["extract", "--method", "uncond", "--num-images", "0", "--output", "{tmp}/x"], "--num-images: expected a positive integer"),
        (["extract", "--method", "side", "--num-images", "4", "--output", "{tmp}/x"], "needs a classifier"),
        (["evaluate", "--generated", "{tmp}/x", "--reference", "default", "--output", "{tmp}/e", "--similarity", "carlni"],
         "did you mean 'carlini'"),
        (["evaluate", "--generated", "{tmp}/x", "--reference", "default", "--output", "{tmp}/e", "--similarity", "cosine"],
         "name the feature extractor"),
        (["extract", "--method", "uncond", "--num-images", "4", "--scheduler", "heun2", "--output", "{tmp}/x"], "invalid choice: 'heun2'"),
        (["push", "{tmp}", "--repo", "me/x"], "neither a pipeline folder"),
    ],
)
def test_cli_errors_are_one_line_and_nonzero(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = side(argv)
    except SystemExit as exit:  # argument errors exit from argparse
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith(f"side {argv[0]}: error:") and message in last_line


def test_python_m_entry_point_and_help_examples():
    result = subprocess.run([sys.executable, "-m", "diffusers_side", "extract", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "example:" in result.stdout and "side extract" in result.stdout
    missing = subprocess.run([sys.executable, "-m", "diffusers_side", "extract"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "required" in missing.stderr


# --- presets: `side demo --preset demo|paper` ----------------------------------------------------------


class _Captured(Exception):
    """Raised instead of running a demo, carrying the settings it would have run with."""


@pytest.fixture
def captured_config(monkeypatch):
    from diffusers_side.workflows.demo import Demo

    def capture(self):
        raise _Captured(self.config)

    monkeypatch.setattr(Demo, "run", capture)

    def run(argv):
        with pytest.raises(_Captured) as info:
            side(["demo", *argv])
        return info.value.args[0]

    return run


def test_paper_preset_has_the_documented_values():
    from diffusers_side.workflows.demo import PAPER, DemoConfig, resolve_config

    config = resolve_config(preset="paper")
    assert config == PAPER and config.preset == "paper"
    assert (config.num_synthetic, config.num_clusters, config.num_images) == (10_000, 100, 5_000)
    assert config.classifier_size == "auto" and config.sweep_criterion == "blind-groups"
    assert (config.classifier_layers, config.classifier_base_channels) == ("resnet34", 64)  # with --classifier-size paper
    assert config.classifier_steps is None and config.classifier_epochs == 20
    assert (config.classifier_learning_rate, config.classifier_batch_size) == (1e-4, 64)
    assert config.sweep_guidance_scales == (0, 1, 2, 5, 10, 20, 50)
    assert config.selection_seed != config.seed and config.selection_num_images == 1_000
    assert resolve_config() == resolve_config(preset="demo") == DemoConfig()


def test_explicit_flags_override_the_preset(tmp_path, captured_config):
    config = captured_config(["--preset", "paper", "--num-images", "7", "--seed", "3", "--output", str(tmp_path / "d")])
    assert (config.preset, config.num_images, config.seed, config.num_synthetic) == ("paper", 7, 3, 10_000)
    assert config.sweep_guidance_scales == (0, 1, 2, 5, 10, 20, 50)
    fixed = captured_config(["--preset", "paper", "--guidance-scale", "4", "--output", str(tmp_path / "d")])
    assert (fixed.guidance_scale, fixed.sweep_guidance_scales, fixed.num_images) == (4, (), 5_000)
    resnet34 = captured_config(["--preset", "paper", "--classifier-size", "paper", "--output", str(tmp_path / "d")])
    assert (resnet34.classifier_size, resnet34.num_synthetic, resnet34.num_images) == ("paper", 10_000, 5_000)
    tuned = captured_config(["--preset", "paper", "--sweep-criterion", "auditor-tuned", "--output", str(tmp_path / "d")])
    assert tuned.sweep_criterion == "auditor-tuned"
    default = captured_config(["--output", str(tmp_path / "d")])
    assert (default.preset, default.num_synthetic, default.sweep_guidance_scales) == ("demo", 1000, ())
    assert default.scheduler == "ddpm" and default.guidance_scale is None
    assert captured_config(["--scheduler", "ddim", "--output", str(tmp_path / "d")]).scheduler == "ddim"


def test_a_guarded_sweep_runs_at_demo_scale_from_the_cli(tmp_path, captured_config):
    config = captured_config(["--sweep-guidance-scales", "0,5,20", "--selection-num-images", "300", "--output", str(tmp_path / "d")])
    assert (config.preset, config.num_synthetic, config.num_images) == ("demo", 1000, 500)
    assert (config.sweep_guidance_scales, config.selection_num_images, config.sweep_criterion) == ((0, 5, 20), 300, "blind-groups")


def test_a_sweep_without_generations_per_lambda_is_refused_naming_the_flag(tmp_path, capsys):
    # the demo preset has no sweep, so its 0 generations per lambda are refused (before any stage) with the flag
    assert side(["demo", "--sweep-guidance-scales", "0,5", "--output", str(tmp_path / "e")]) != 0
    error = capsys.readouterr().err
    assert "selection_num_images=0" in error and "side demo --selection-num-images N" in error
    assert not (tmp_path / "e").exists()


def test_each_method_samples_at_its_own_default_scale_unless_one_is_given(tmp_path):
    from diffusers_side.workflows.demo import Demo, resolve_config

    def scales(**overrides):
        demo = Demo(tmp_path / "d", resolve_config(**overrides))
        return {m: demo.generation_settings(m).guidance_scale for m in ("side", "cond", "side-exemplar", "uncond")}

    assert scales() == {"side": 1.0, "cond": 1.0, "side-exemplar": 10.0, "uncond": 0.0}
    assert scales(guidance_scale=3.0) == {"side": 3.0, "cond": 3.0, "side-exemplar": 3.0, "uncond": 0.0}
    assert {Demo(tmp_path / "d", resolve_config()).generation_settings(m).scheduler for m in ("synthetic", "side")} == {"ddpm"}


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--quick", "--preset", "paper"], "--quick and --preset paper contradict each other"),
        (["--preset", "paper", "--seed", "1"], "selection seed 1 equals the run seed --seed 1"),
    ],
)
def test_contradicting_preset_flags_are_refused_before_any_work(tmp_path, capsys, argv, message):
    assert side(["demo", *argv, "--output", str(tmp_path / "d")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.usefixtures("no_model_loading")
def test_resuming_with_another_preset_is_refused(tmp_path, capsys):
    from dataclasses import asdict, replace

    from diffusers_side.workflows.demo import CONFIG_FILE, PAPER, QUICK

    for recorded, argv, name in ((PAPER, ["--quick"], "paper"), (QUICK, ["--preset", "paper"], "quick")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(replace(recorded, num_images=QUICK.num_images))))
        assert side(["demo", *argv, "--output", str(folder)]) == 2
        assert f"holds a demo of preset {name!r}" in capsys.readouterr().err
        assert sorted(path.name for path in folder.iterdir()) == [CONFIG_FILE]


def test_quick_demo_reports_held_out_accuracy_per_quartile_and_the_lambda_sweep(tmp_path):
    from diffusers_side.workflows.demo import run_demo
    from diffusers_side.workflows.demo_sweep import BLIND, SWEEP_DIRS

    report = run_demo(tmp_path / "demo", quick=True, sweep_guidance_scales=(0, 2), selection_num_images=4)
    for name in ("classifier-side", "classifier-cond"):
        accuracy = report["classifiers"][name]
        assert "held-out" in accuracy["evaluated_on"]
        assert [accuracy[f"q{q}"]["timesteps"] for q in range(4)] == [[0, 249], [250, 499], [500, 749], [750, 999]]
        assert all(0 <= accuracy[key]["accuracy"] <= 1 for key in ("clean", "q0", "q1", "q2", "q3"))
    selection = report["guidance_selection"]
    assert set(selection["blind_groups"]) == {"0", "2"} and selection["selected"] in (0, 2)
    assert all(0 <= row["in_cluster_rate"] <= row["hit_rate"] <= 1 for row in selection["blind_groups"].values())
    assert selection["guard_limit"] in (0, 2) and selection["selected"] <= selection["guard_limit"]
    sweep_config = json.loads((tmp_path / "demo" / SWEEP_DIRS[BLIND] / "sweep_config.json").read_text())
    assert (sweep_config["seed"], sweep_config["num_images"]) == (1, 4)
    extracted = json.loads((tmp_path / "demo" / "extract-side" / "generation.json").read_text())
    assert extracted["guidance_scale"] == selection["selected"] and extracted["seed"] == 0
    markdown = (tmp_path / "demo" / "report.md").read_text()
    assert "## Classifier accuracy per timestep quartile" in markdown and "| classifier-side | 8 |" in markdown
    assert "q3 (t 750-999)" in markdown and "## Guidance scale selection" in markdown
    assert "in target cluster (%)" in markdown and "Collapse guard: lambdas above" in markdown
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["classifiers"] == report["classifiers"]


def test_select_guidance_scale_takes_the_most_mid_and_high_and_the_smaller_on_ties():
    from diffusers_side.workflows.demo import select_guidance_scale

    def report(high, mid, low):
        bands = [{"name": "high", "low": 0.0, "high": 1 / 3}, {"name": "mid", "low": 1 / 3, "high": 0.5},
                 {"name": "low", "low": 0.5, "high": 2 / 3}]
        return {"bands": bands, "similarity": {"kind": "carlini"}, "methods": {"side": {"ams": {"high": high, "mid": mid, "low": low}}}}

    assert select_guidance_scale({"0": report(0.01, 0.1, 0.5), "5": report(0.05, 0.08, 0.0), "2": report(0.0, 0.2, 0.0)}) == 2
    assert select_guidance_scale({"10": report(0.1, 0.1, 0), "1": report(0.2, 0.0, 0)}) == 1
