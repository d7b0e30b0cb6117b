"""Smoke runs of the benchmark scripts (``--quick``: tiny sizes): each runs end to end and writes what its README section
reads. Timing goals are not tested here (they live in benchmarks/README.md); what is asserted is what must hold at any
size: guidance 0 bit-identical to DDPMPipeline, folded and layer-by-layer classifiers giving the same images, every stage
and size present in the results, intervals that contain their estimate."""

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run_benchmark(monkeypatch, name: str, output: Path, *extra: str) -> dict:
    """Run ``benchmarks/<name>.py --quick --output <output>`` in this process and return its JSON."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    for table in ("SIZES",):  # quick runs swap entries of these module tables: keep the swap local to this test
        if hasattr(module, table):
            monkeypatch.setattr(module, table, dict(getattr(module, table)))
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--quick", "--output", str(output), *extra])
    module.main()
    return json.loads(output.read_text())


@pytest.mark.usefixtures("single_thread")
def test_bench_speed_cuts_quick(monkeypatch, tmp_path):
    results = run_benchmark(monkeypatch, "bench_speed_cuts", tmp_path / "speed_cuts.json")
    sampling = results["sampling"]
    assert sampling["guidance_0_equals_DDPMPipeline"] is True
    assert set(sampling["cpu_s_per_image"]) == {"plain", "demo before", "demo after", "auto before", "auto after"}
    assert all(difference < 1e-3 for difference in sampling["max_pixel_difference_after_vs_before"].values())
    assert {"synthesis step (UNet forward)", "labelling (UNet features)"} <= set(results["profiles"])
    assert all(ops and 0 < ops[0]["share"] <= 1 for ops in results["profiles"].values())
    for entry in results["classifier_options"].values():
        assert {"layer by layer", "layer by layer, channels-last model", "fused (library)", "fused, bf16 autocast"} == set(
            entry["cpu_ms_per_image_step"])
        assert 0 <= entry["bf16_gradient_relative_error"] < 1


@pytest.mark.usefixtures("single_thread")
def test_bench_scaling_quick(monkeypatch, tmp_path):
    results = run_benchmark(monkeypatch, "bench_scaling", tmp_path / "scaling.json")
    assert set(results["image_size"]) == {"8x1", "16x1"}
    stages = results["image_size"]["16x1"]
    assert {"synthesis (UNet step)", "train step auto", "guided step paper", "search (per generation vs 1,000)"} <= set(stages)
    assert all(stage["cpu_s_per_unit"] > 0 and stage["units"] >= 2 for stage in stages.values())
    assert set(results["n_syn"]) == {"120", "240"} and set(results["n_g"]) == {"50", "100"}
    projection = results["projections"]["tiny32"]
    assert projection["unet_gflop_per_step"] > 0 and projection["counts"]["unet_images"] == 37_000
    assert projection["paper"]["cpu_hours_1_core"] > 0 and projection["auto"]["gpu_minutes_projected"] > 0
    assert (tmp_path / "scaling.png").stat().st_size > 10_000


@pytest.mark.usefixtures("single_thread")
def test_bench_classifier_size_quick(monkeypatch, tmp_path):
    results = run_benchmark(monkeypatch, "bench_classifier_size", tmp_path / "classifier_size.json")
    auto = results["sizes"]["auto"]
    assert (auto["layers"], auto["base_channels"], auto["global_step"]) == ("resnet18", 16, 2)
    for entry in results["sizes"].values():
        assert set(entry["evaluation"]) == {"clean", "q0", "q1", "q2", "q3"}
        for split in entry["evaluation"].values():
            low, high = split["ci95"]
            assert 0 <= low <= split["accuracy"] <= high <= 1
        assert entry["guided_cpu_s_per_image"] > 0 and entry["parameters"] > 0


@pytest.mark.usefixtures("single_thread")
def test_bench_full_scale_quick(monkeypatch, tmp_path):
    results = run_benchmark(monkeypatch, "bench_full_scale", tmp_path / "full_scale.json", "--classifier-size", "auto")
    stages = results["extrapolated_cpu_min"]
    assert {"synthesize", "label kmeans", "train classifier-side", "extract side-exemplar"} <= set(stages)
    assert all(minutes >= 0 for minutes in stages.values()) and results["total_hours_1_core"] > 0
    assert results["total_hours_2_cores"] <= results["total_hours_1_core"]
    flops = results["gflop_per_unit"]
    assert flops["extract side (report + sweep lambda > 0)"] > flops["extract plain (uncond + sweep lambda 0)"] > 0
