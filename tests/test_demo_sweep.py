"""`side demo`'s lambda sweep: attacker-side by default (blind near-duplicate groups, no training image read), the
reference-scored choice only when asked for as ``auditor-tuned`` and labelled so."""

import json
from dataclasses import asdict, replace

import pytest

from diffusers_side.cli import main as side
from diffusers_side.evaluation.report import guidance_selection_section
from diffusers_side.storage.embedded import load_training_subset
from diffusers_side.workflows.demo import CONFIG_FILE, QUICK, Demo, resolve_config, run_demo
from diffusers_side.workflows.demo_sweep import (
    AUDITOR,
    BLIND,
    BLIND_SWEEP_JSON,
    SWEEP_DIRS,
    guard_limit,
    select_by_blind_groups,
    sweep_is_done,
)


def _counts(**groups_and_sizes):
    return {scale.lstrip("l").replace("_", "."): {"num_groups": g, "num_generations": n} for scale, (g, n) in groups_and_sizes.items()}


def test_blind_rule_counts_groups_per_generation_and_ties_go_to_the_smaller_lambda():
    assert select_by_blind_groups(_counts(l0=(3, 100), l2=(9, 100), l5=(7, 100))) == 2.0
    assert select_by_blind_groups(_counts(l0=(10, 100), l10=(15, 300))) == 0.0  # per generation: 0.10 > 0.05
    assert select_by_blind_groups(_counts(l20=(4, 100), l1_5=(4, 100), l50=(4, 100))) == 1.5
    assert select_by_blind_groups(_counts(l0=(0, 50), l1=(0, 50))) == 0.0


# The paper-preset sweep on digits-rare (selection seed 1, 1,000 images per lambda): blind groups and the labeller's
# in-target-cluster rate, as benchmarks/results/paper-preset and docs/attacker-study.md record them.
PAPER_SWEEP = {"0": (9, 0.018), "1": (8, 0.091), "2": (12, 0.224), "5": (23, 0.546), "10": (43, 0.678),
               "20": (55, 0.733), "50": (76, 0.695)}


def test_collapse_guard_stops_at_the_peak_of_the_labellers_in_cluster_rate():
    counts = {scale: {"num_groups": g, "num_generations": 1000, "in_cluster_rate": rate} for scale, (g, rate) in PAPER_SWEEP.items()}
    assert guard_limit(counts) == 20.0 and select_by_blind_groups(counts) == 20.0  # without the guard: 50
    without_rates = {scale: {k: v for k, v in row.items() if k != "in_cluster_rate"} for scale, row in counts.items()}
    assert guard_limit(without_rates) is None and select_by_blind_groups(without_rates) == 50.0  # a sweep from before
    counts["5"]["in_cluster_rate"] = counts["20"]["in_cluster_rate"]  # a tie at the peak goes to the smaller lambda
    assert guard_limit(counts) == 5.0 and select_by_blind_groups(counts) == 5.0


def test_a_blind_sweep_written_before_the_guard_is_not_done(tmp_path):
    counts = {"0": {"num_groups": 1, "num_generations": 10}, "2": {"num_groups": 2, "num_generations": 10}}
    (tmp_path / BLIND_SWEEP_JSON).write_text(json.dumps(counts))
    assert not sweep_is_done(BLIND, tmp_path)  # resumed: the rates are added, the images reused
    for row in counts.values():
        row["in_cluster_rate"] = 0.5
    (tmp_path / BLIND_SWEEP_JSON).write_text(json.dumps(counts))
    assert sweep_is_done(BLIND, tmp_path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sweep_criterion": "oracle"}, "sweep_criterion 'oracle' is not one of"),
        ({"sweep_guidance_scales": (0.0, 2.0), "selection_num_images": 2}, "selection_num_images=2: the blind sweep"),
    ],
)
def test_bad_sweep_settings_are_refused_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        Demo(tmp_path / "d", resolve_config(quick=True, **overrides)).check()
    assert not (tmp_path / "d").exists()


def test_a_demo_recorded_before_the_criterion_existed_was_auditor_tuned_and_is_not_resumed_blind(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    recorded = {k: v for k, v in asdict(replace(QUICK, sweep_guidance_scales=(0.0, 2.0), selection_num_images=4)).items()
                if k != "sweep_criterion"}
    (folder / CONFIG_FILE).write_text(json.dumps(recorded))
    with pytest.raises(FileExistsError, match=r"other settings \(sweep_criterion\)"):
        Demo(folder, resolve_config(quick=True, sweep_guidance_scales=(0.0, 2.0), selection_num_images=4)).check()
    Demo(folder, resolve_config(quick=True, sweep_guidance_scales=(0.0, 2.0), selection_num_images=4,
                                sweep_criterion=AUDITOR)).check()


def test_default_sweep_never_reads_the_reference_and_auditor_tuned_is_labelled(tmp_path, monkeypatch, capsys):
    reference, hidden = tmp_path / "reference", tmp_path / "reference-hidden"
    reference.mkdir()
    for i, image in enumerate(load_training_subset()["image"]):
        image.save(reference / f"{i:03d}.png")
    blind_sweep = Demo.sweep

    def sweep_without_reference(self):  # the training set is out of reach while the default sweep runs
        reference.rename(hidden)
        try:
            blind_sweep(self)
        finally:
            hidden.rename(reference)

    monkeypatch.setattr(Demo, "sweep", sweep_without_reference)
    out = tmp_path / "demo"
    settings = {"sweep_guidance_scales": (0.0, 2.0), "selection_num_images": 6, "reference": str(reference)}
    report = run_demo(out, quick=True, **settings)
    selection = report["guidance_selection"]
    assert (selection["criterion"], selection["reads_training_set"]) == (BLIND, False) and "ams" not in selection
    assert set(selection["blind_groups"]) == {"0", "2"}
    assert selection["selected"] == select_by_blind_groups(selection["blind_groups"])
    assert json.loads((out / SWEEP_DIRS[BLIND] / BLIND_SWEEP_JSON).read_text()) == selection["blind_groups"]
    for scale in ("0", "2"):
        summary = json.loads((out / SWEEP_DIRS[BLIND] / f"scale-{scale}" / "candidates.json").read_text())
        assert summary["num_generations"] == 6 and summary["generation_settings"]["seed"] == 1
        assert summary["num_groups"] == selection["blind_groups"][scale]["num_groups"]
    assert not (out / SWEEP_DIRS[AUDITOR]).exists()
    extracted = json.loads((out / "extract-side" / "generation.json").read_text())
    assert extracted["guidance_scale"] == selection["selected"] and extracted["seed"] == 0
    markdown = (out / "report.md").read_text()
    assert "**Criterion: blind-groups** - attacker-side" in markdown and "| 2 | 6 |" in markdown

    # the oracle choice is a separate, labelled sweep: not resumable into a blind demo's folder
    with pytest.raises(FileExistsError, match=r"other settings \(sweep_criterion\)"):
        run_demo(out, quick=True, sweep_criterion=AUDITOR, **settings)
    monkeypatch.undo()
    auditor = Demo(out, replace(resolve_config(quick=True, **settings), sweep_criterion=AUDITOR))
    auditor.sweep()
    tuned = auditor.guidance_selection()
    assert (tuned["criterion"], tuned["reads_training_set"]) == (AUDITOR, True) and set(tuned["ams"]) == {"0", "2"}
    assert json.loads((out / SWEEP_DIRS[AUDITOR] / "sweep_config.json").read_text())["reference"] == str(reference)
    section = "\n".join(guidance_selection_section(tuned, [], "carlini"))
    assert "**Criterion: auditor-tuned** - auditor-tuned (an oracle step an attacker cannot take" in section
    with pytest.raises(SystemExit) as exit_info:
        side(["demo", "--sweep-criterion", "best", "--output", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'best'" in capsys.readouterr().err
