"""The `side` command line and `side demo --quick` on the embedded default model."""

import json
import subprocess
import sys

import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline

from diffusers_side import SIDEPipeline
from diffusers_side.cli import main as side
from diffusers_side.default_model import DEFAULT_PIPELINE_DIR, load_training_subset, subset_indices


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
    assert timings["total"] >= timings["synthesize"] > 0


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
