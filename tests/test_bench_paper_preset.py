"""Smoke run of ``benchmarks/bench_paper_preset.py`` on a quick demo: it reads the run's stages, times guided against
plain sampling with the run's own classifier (guidance 0 bit-identical to DDPMPipeline), predicts each stage from a
`bench_full_scale.py` result and projects the ResNet-34 branch from it. Timing goals live in benchmarks/README.md."""

import json
import sys

import pytest
from test_benchmarks_smoke import BENCHMARKS, run_benchmark

from diffusers_side.workflows.demo import run_demo


@pytest.mark.usefixtures("single_thread")
def test_bench_paper_preset_quick(monkeypatch, tmp_path):
    run = tmp_path / "demo"
    run_demo(run, quick=True, sweep_guidance_scales=(0, 2), selection_num_images=6)
    extrapolation = f"resnet34={BENCHMARKS / 'results' / 'full_scale.json'}"
    results = run_benchmark(monkeypatch, "bench_paper_preset", tmp_path / "pp.json", str(run),
                            "--extrapolation", extrapolation, "--resnet34", "resnet34")
    stages = results["stages"]
    assert list(stages) == ["synthesize", "label", "train classifier-side", "train classifier-cond", "sweep side",
                            "extract side", "extract uncond", "extract cond", "extract side-exemplar", "evaluate"]
    assert (stages["sweep side"]["units"], stages["extract side"]["units"]) == (12, 12)
    assert stages["train classifier-side"]["units"] == json.loads((run / "classifier-side" / "train_log.json").read_text())["global_step"]
    # the sweep is predicted from its lambda 0 part at the plain cost and its lambda 2 part at the guided cost
    full = json.loads((BENCHMARKS / "results" / "full_scale.json").read_text())
    per_image = {row: 60 * full["extrapolated_cpu_min"][row] / full["full_sizes"][row] for row in full["full_sizes"]}
    expected = 6 * per_image["extract plain (uncond + sweep lambda 0)"] + 6 * per_image["extract side (report + sweep lambda > 0)"]
    assert stages["sweep side"]["extrapolated_cpu_s"]["resnet34"] == pytest.approx(expected, abs=0.06)

    ratio = results["guided_vs_plain"]
    assert ratio["guidance_0_equals_DDPMPipeline"] is True and ratio["guidance_scale"] in (0, 2, 1.0)
    assert ratio["ratio"] > 0 and ratio["classifier"]["layers"] == "resnet18"  # the quick preset's classifier
    assert ratio["ratio_in_the_run"] == pytest.approx(stages["extract side"]["cpu_s"] / stages["extract uncond"]["cpu_s"])

    branch = results["resnet34_branch"]["stages"]
    assert branch["train classifier-side"]["cpu_s"] == stages["train classifier-side"]["extrapolated_cpu_s"]["resnet34"]
    assert branch["extract uncond"] == {"cpu_s": stages["extract uncond"]["cpu_s"], "source": "measured in the run"}

    monkeypatch.setattr(sys, "argv", ["bench_paper_preset.py", str(run), "--quick", "--extrapolation", extrapolation,
                                      "--resnet34", "paper"])
    with pytest.raises(ValueError, match="--resnet34 'paper' names no --extrapolation; pass one of \\['resnet34'\\]"):
        sys.modules["bench_paper_preset"].main()
