"""Smoke runs of the older benchmark scripts at tiny sizes (each spawns a fresh process per method for clean memory
peaks, so one method each): they run end to end, write their JSON where told (never over benchmarks/results/), and the
identities they check hold. Timing goals live in benchmarks/README.md, not here."""

import pytest
from test_benchmarks_smoke import run_benchmark


@pytest.mark.usefixtures("single_thread")
def test_bench_x0_guidance_quick(monkeypatch, tmp_path):
    results = run_benchmark(monkeypatch, "bench_x0_guidance", tmp_path / "x0.json")
    assert set(results["seconds_per_image"]) == {"uncond", "side_xt", "side_x0", "cond_x0"}
    assert set(results["seconds_per_image_step"]) == {"unet_forward", "unet_forward_backward"}
    assert all(seconds > 0 for seconds in [*results["seconds_per_image"].values(), *results["seconds_per_image_step"].values()])


@pytest.mark.usefixtures("single_thread")
def test_bench_lora_cost_quick_writes_only_where_told(monkeypatch, tmp_path):
    results = run_benchmark(monkeypatch, "bench_lora_cost", tmp_path / "lora_cost.json")
    assert results["seconds_per_training_step"] and results["seconds_per_image"]
    assert all(seconds > 0 for seconds in [*results["seconds_per_training_step"].values(), *results["seconds_per_image"].values()])


@pytest.mark.usefixtures("single_thread")
def test_bench_clustering_quick(monkeypatch, tmp_path):
    results = run_benchmark(monkeypatch, "bench_clustering", tmp_path / "clustering.json", "--num-synthetic", "300",
                            "--dimension", "16", "--clusters", "10", "--methods", "kmeans")
    run = results["results"]
    assert (run["num_synthetic"], run["dimension"], run["clusters"]) == (300, 16, 10)
    assert set(run["methods"]) == {"kmeans"} and run["methods"]["kmeans"]["inertia"] > 0


@pytest.mark.usefixtures("single_thread")
def test_bench_nearest_match_quick(monkeypatch, tmp_path):
    results = run_benchmark(monkeypatch, "bench_nearest_match", tmp_path / "nearest.json", "--sizes", "gray16:50x100",
                            "--methods", "carlini")
    (row,) = results["results"]
    assert (row["num_generated"], row["num_train"], row["dimension"]) == (50, 100, 256)
    assert set(row["methods"]) == {"carlini"} and row["methods"]["carlini"]["seconds"] >= 0


@pytest.mark.usefixtures("single_thread")
def test_bench_guided_sampling_quick(monkeypatch, tmp_path):
    results = run_benchmark(monkeypatch, "bench_guided_sampling", tmp_path / "guided.json", "--config", "digits",
                            "--repeats", "1", "--no-memory")
    (row,) = results["results"]
    assert row["config"] == "digits" and row["side_unguided_equals_ddim"] is True


@pytest.mark.usefixtures("single_thread")
def test_divergence_gaussian_check_small(monkeypatch, tmp_path):
    import importlib
    import json
    import sys

    from test_benchmarks_smoke import BENCHMARKS

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    output = tmp_path / "gaussian.json"
    monkeypatch.setattr(sys, "argv", ["divergence_gaussian_check.py", "--num-images", "4", "--num-samples", "4", "--output", str(output)])
    importlib.import_module("divergence_gaussian_check").main()
    report = json.loads(output.read_text())
    assert {"isotropic s=0.2", "rotated anisotropic s=0.02..0.4"} <= set(report)
    for name in ("isotropic s=0.2", "rotated anisotropic s=0.02..0.4"):
        assert min(row["max_rel_error"] for row in report[name]["log_p"]) < 0.05, name  # the tightest tolerance
        assert all(abs(row["rel_error"]) < 0.05 for row in report[name]["divergence"]), name  # M within 5 % of exact


@pytest.mark.usefixtures("single_thread")
def test_compare_search_against_this_checkout(monkeypatch, tmp_path):
    import importlib
    import json
    import sys

    from test_benchmarks_smoke import BENCHMARKS

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    output = tmp_path / "compare.json"
    argv = ["compare_search.py", "--before", str(BENCHMARKS.parent), "--sizes", "gray16:50x100", "--repeats", "1", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    importlib.import_module("compare_search").main()
    rows = json.loads(output.read_text())["rows"]
    assert [row["k"] for row in rows] == [50, 2]
    assert all(row["same_all"] == 1.0 and row["max_score_difference"] == 0.0 for row in rows), "one search against itself"


@pytest.mark.usefixtures("single_thread")
def test_divergence_by_steps_resumes_from_its_lines(monkeypatch, tmp_path):
    import importlib
    import json
    import sys

    from test_benchmarks_smoke import BENCHMARKS

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    output = tmp_path / "steps.jsonl"
    argv = ["divergence_by_steps.py", "--reference", "digits-rare", "--models", "digits-rare", "--num-samples", "2",
            "--rtol", "0.1", "--batch-size", "2", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    module = importlib.import_module("divergence_by_steps")
    module.main()
    (row,) = [json.loads(line) for line in output.read_text().splitlines()]
    assert row["model"] == "digits-rare" and row["train"]["num_images"] == 200
    assert row["gap"] == pytest.approx(row["holdout"]["value"] - row["train"]["value"])
    monkeypatch.setattr(module, "memorization_divergence", lambda *a, **k: pytest.fail("a finished model is scored again"))
    module.main()  # resumes: the model already in --output is skipped
    assert len(output.read_text().splitlines()) == 1
