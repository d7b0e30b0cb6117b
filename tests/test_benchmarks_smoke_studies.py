"""Smoke runs of the study scripts in benchmarks/ (query-only SIDE, the measured canary audit) at tiny sizes, and a
check that no benchmark script is left without a test that runs it. What is asserted holds at any size: stages resume
instead of redoing work, results name every configuration and budget asked for, intervals contain their estimate."""

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SHARED_HELPERS = {"bench_common"}  # imported by the scripts, not a script of its own


def run_script(monkeypatch, name: str, *argv: str) -> None:
    """Run ``benchmarks/<name>.py ARGV`` in this process."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    module.main()


def inside(interval) -> bool:
    estimate, low, high = interval
    return low - 1e-12 <= estimate <= high + 1e-12


@pytest.mark.usefixtures("single_thread")
def test_query_only_study_runs_resumes_and_reports(monkeypatch, tmp_path, capsys):
    run, rows = tmp_path / "run", tmp_path / "rows.jsonl"
    run_script(monkeypatch, "query_only_study", "prepare", "--run", str(run), "--quick")
    assert (run / "labels" / "surrogate_labels.json").is_file() and (run / "classifier-side" / "model_index.json").is_file()
    argv = ["run", "--run", str(run), "--seed", "1", "--budgets", "4", "8", "--plain-extra", "12",
            "--configs", "4/cohesion", "--output", str(rows)]
    run_script(monkeypatch, "query_only_study", *argv)
    written = [json.loads(line) for line in rows.read_text().splitlines()]
    assert sorted((r["config"], r["budget"]) for r in written) == [
        ("plain", 4), ("plain", 8), ("plain", 12), ("query-only 4/cohesion", 4), ("query-only 4/cohesion", 8)]
    for row in written:
        assert row["all"]["n"] == row["budget"] and row["seed"] == 1
        assert all(inside(row["all"]["ams"][band]) for band in ("low", "mid", "high"))
    search = next(r for r in written if r["config"] == "query-only 4/cohesion" and r["budget"] == 8)
    assert search["num_targets"] == 2 and 0 <= search["hit_rate"] <= 1

    run_script(monkeypatch, "query_only_study", *argv)  # finished configurations are skipped, not appended again
    assert len(rows.read_text().splitlines()) == len(written)

    capsys.readouterr()
    figure = tmp_path / "curve.png"
    run_script(monkeypatch, "query_only_study", "report", "--inputs", str(rows), "--figure", str(figure), "--figure-seed", "1")
    table = capsys.readouterr().out
    assert "| plain | 1 | 12 | 12 |" in table and "| query-only 4/cohesion | 1 | 8 | 8 |" in table
    assert figure.stat().st_size > 0


@pytest.mark.usefixtures("single_thread")
def test_canary_measured_trains_resumes_and_audits(monkeypatch, tmp_path, capsys):
    run = tmp_path / "canary"
    run_script(monkeypatch, "canary_measured", "prepare", "--run", str(run))
    train = ["train", "--run", str(run), "--batch-size", "4", "--save-every", "2"]
    run_script(monkeypatch, "canary_measured", *train, "--steps", "2")
    capsys.readouterr()
    run_script(monkeypatch, "canary_measured", *train, "--steps", "4")  # picks up model-2, does not start over
    assert "resuming at step 2" in capsys.readouterr().out
    assert (run / "model-2" / "model_index.json").is_file() and (run / "model-4" / "model_index.json").is_file()

    run_script(monkeypatch, "canary_measured", "audit", "--run", str(run), "--step", "4", "--num-controls", "2",
               "--images-per-trigger", "1", "--num-inference-steps", "2")
    result = json.loads((run / "audit-4" / "by_repeat.json").read_text())
    assert result["step"] == 4 and set(result["by_repeat"]) == {"1", "4", "16"}
    for row in result["by_repeat"].values():
        assert set(row) == {"low", "mid", "high", "any band"} and all(map(inside, row.values()))
    assert set(result["controls"]) >= {"low", "mid", "high", "any band"}


def test_every_benchmark_script_is_run_by_a_test():
    scripts = {path.stem for path in BENCHMARKS.glob("*.py")} - SHARED_HELPERS
    tests = "\n".join(path.read_text() for path in Path(__file__).parent.glob("test_*.py"))
    untested = sorted(name for name in scripts if f'"{name}"' not in tests and f"import {name}\n" not in tests)
    assert not untested, f"benchmark scripts no test runs: {untested}; add a smoke run (tests/test_benchmarks_smoke*.py)"


@pytest.mark.usefixtures("single_thread")
def test_cluster_allocation_replays_every_policy(monkeypatch, tmp_path):
    import numpy as np

    from conftest import write_generation_dir
    from diffusers_side.evaluation.evaluate import evaluate
    from diffusers_side.storage.embedded import load_training_subset

    digits = [np.asarray(image.convert("L"), dtype=np.float64) for image in load_training_subset("digits-rare")["image"][:10]]
    rng = np.random.default_rng(0)
    images = [np.clip(digits[i % 10] + rng.normal(0, 3 + 20 * (i % 4), digits[0].shape), 0, 255).astype(np.uint8) for i in range(60)]
    pool = write_generation_dir(tmp_path / "pool", images, method="side", guidance_scale=5.0)
    evaluate([pool], "digits-rare", tmp_path / "eval")
    output = tmp_path / "allocation.json"
    argv = ["--pool", str(pool), "--matches", str(tmp_path / "eval" / "matches.parquet"), "--budgets", "30", "60",
            "--round", "10", "--replays", "2", "--output", str(output)]
    run_script(monkeypatch, "cluster_allocation", *argv)
    result = json.loads(output.read_text())
    assert (result["pool_size"], result["clusters"]) == (60, 3) and result["pool_distinct_mid_high"] > 0
    assert set(result["policies"]) == {"uniform", "thompson", "retire", "oracle"}
    for policy in result["policies"].values():  # the whole pool chosen: every policy holds the pool's distinct images
        assert policy["60"]["distinct_mid_high"] == [result["pool_distinct_mid_high"], 0.0]
        assert policy["30"]["distinct_mid_high"][0] <= result["pool_distinct_mid_high"]
    with pytest.raises(SystemExit):
        run_script(monkeypatch, "cluster_allocation", *argv[:5], "61", "--output", str(output))


def test_prefix_blind_groups_counts_groups_among_each_folders_first_generations(monkeypatch, tmp_path):
    import numpy as np

    from conftest import write_generation_dir

    rng = np.random.default_rng(0)
    copy = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    noise = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(12)]
    write_generation_dir(tmp_path / "phase" / "copies-first", [copy, copy, copy, *noise], method="uncond")
    write_generation_dir(tmp_path / "phase" / "copies-late", [*noise, copy, copy, copy], method="uncond")
    (tmp_path / "phase" / "copies-first-eval").mkdir()  # not a generation folder: skipped
    output = tmp_path / "groups.json"
    run_script(monkeypatch, "prefix_blind_groups", "--phase-dir", str(tmp_path / "phase"), "--num-generations", "10",
               "--output", str(output))
    result = json.loads(output.read_text())
    assert result["num_generations"] == 10 and result["groups"] == {"copies-first": 1, "copies-late": 0}
