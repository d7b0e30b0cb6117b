"""Reliability round 3b: the remaining cases of a hostile probe's defects (mixed sizes, matches tables by content,
forged manifests), each failing on main before its fix.

Tests drive the `side` command in process through `test_reliability.run`, which also asserts that every failure is
one line without a traceback. The cases main already handled are covered by tests/test_reliability_round4.py.
"""

import json
from pathlib import Path

import pytest
from PIL import Image
from test_reliability import run, save_ddpm
from test_reliability_round4 import _save_pngs

MATCHES = {"generated": [0, 1], "best_match": [3, 4], "score": [0.1, 0.2], "band": ["copy", "novel"]}


# --- 1. side evaluate names the set whose images have mixed sizes, whichever similarity reads it --------------------


@pytest.mark.parametrize("role", ["reference", "generated"])
def test_evaluate_with_a_feature_similarity_names_the_set_whose_images_have_mixed_sizes(tmp_path, capsys, role):
    # main: "Images have mixed sizes: (C, H, W) = (1, 8, 8) at the start but (1, 12, 12) from image 4; resize the data
    # set to one size first." (--similarity pixels, sizes changing between batches): neither the set nor --resolution
    sets = {"generated": tmp_path / "generated", "reference": tmp_path / "reference"}
    for name, folder in sets.items():
        _save_pngs(folder, 8, 4, "a")
    _save_pngs(sets[role], 12, 2, "b")
    argv = ["evaluate", "--generated", sets["generated"], "--reference", sets["reference"], "--output", tmp_path / "out",
            "--similarity", "pixels", "--batch-size", "2"]
    code, _, err = run(argv, capsys)
    assert code == 2 and f"Images of '{sets[role]}' have mixed sizes" in err, err
    assert "8x8" in err and "12x12" in err and "--resolution" in err and not (tmp_path / "out" / "report.json").exists(), err


# --- 2. side push recognises a matches table by its columns, in any format and under any name ------------------------


def _write_table(path: Path, fmt: str) -> Path:
    import pyarrow as pa

    table = pa.table(MATCHES)
    if fmt == "parquet-renamed":
        import pyarrow.parquet as pq

        pq.write_table(table, path.with_suffix(".bin"))
        return path.with_suffix(".bin")
    if fmt == "arrow-file":
        import pyarrow.feather as feather

        feather.write_feather(table, path.with_suffix(".feather"))
        return path.with_suffix(".feather")
    if fmt == "arrow-stream":  # what `datasets` saves: data-00000-of-00001.arrow
        with pa.ipc.new_stream(path.with_suffix(".arrow"), table.schema) as writer:
            writer.write_table(table)
        return path.with_suffix(".arrow")
    if fmt == "csv":
        table.to_pandas().to_csv(path.with_suffix(".csv"))  # with the index column pandas adds
        return path.with_suffix(".csv")
    if fmt == "tsv":
        table.to_pandas().to_csv(path.with_suffix(".tsv"), sep="\t", index=False)
        return path.with_suffix(".tsv")
    table.to_pandas().to_json(path.with_suffix(".jsonl"), orient="records", lines=True)
    return path.with_suffix(".jsonl")


@pytest.mark.parametrize("fmt", ["parquet-renamed", "arrow-file", "arrow-stream", "csv", "tsv", "jsonl"])
def test_push_refuses_a_matches_table_in_any_format_by_its_columns(tmp_path, capsys, monkeypatch, fmt):
    # main: only Parquet files named *.parquet were read; the same table as audit.arrow / audit.csv was uploaded
    pipeline = save_ddpm(tmp_path / "pipeline")
    (pipeline / "README.md").write_text("---\nlibrary_name: diffusers\n---\n# card")
    (pipeline / "notes").mkdir()
    table = _write_table(pipeline / "notes" / "audit", fmt)
    uploads = []
    monkeypatch.setattr("huggingface_hub.create_repo", lambda repo_id, **kw: uploads.append(kw["private"]) or type("R", (), {"repo_id": repo_id}))
    monkeypatch.setattr("huggingface_hub.upload_folder", lambda **kwargs: "commit-url")
    code, _, err = run(["push", pipeline, "--repo", "me/side-audit"], capsys)
    assert code == 2 and str(table.relative_to(pipeline)) in err and "--include-training-matches" in err and uploads == [], err


def test_tables_without_the_matches_columns_are_not_matches(tmp_path):
    from diffusers_side.storage.outputs import is_matches_table, training_data_files

    pipeline = save_ddpm(tmp_path / "pipeline")
    (pipeline / "scores.csv").write_text("generated,score\n0,0.5\n")  # a table, but not of matches
    (pipeline / "notes.txt").write_text("best match, score and band are discussed below\n")
    (pipeline / "empty.csv").write_text("")
    assert training_data_files(pipeline) == []
    assert not is_matches_table(pipeline / "unet" / "diffusion_pytorch_model.safetensors")


# --- 3. a forged manifest never makes a folder-replacing command delete folders, links or foreign names --------------


def test_a_forged_manifest_owns_no_folder_and_no_file_of_a_kind_without_patterns(tmp_path):
    # main: a kind without OWN_FILE_PATTERNS owned whatever its manifest listed, folders included (a manifest of kind
    # "generation" listing a pipeline's files made every entry of the pipeline "owned", so deletable)
    from diffusers_side.storage.outputs import LABELS, foreign_entries, owned_files

    victim = save_ddpm(tmp_path / "victim")
    files = sorted(p.relative_to(victim).as_posix() for p in victim.rglob("*") if p.is_file())
    for kind in ("generation", "candidates", "no-such-kind"):
        (victim / ".side_outputs.json").write_text(json.dumps({"kind": kind, "files": files + ["unet", "..", "../x"]}))
        assert owned_files(victim, kind) == set()
        assert foreign_entries(victim, kind) == ["model_index.json", "scheduler", "unet"]
    (victim / ".side_outputs.json").write_text(json.dumps({"kind": LABELS, "files": ["state.json", "unet", "unet/x"]}))
    (victim / "state.json").mkdir()  # a folder named like a file `side label` writes is not its to delete
    assert {"state.json", "unet"} <= set(foreign_entries(victim, LABELS))


def test_a_labels_manifest_cannot_claim_a_link_to_a_file_outside(tmp_path, capsys):
    from test_reliability_round2 import label

    from conftest import write_generation_dir

    synthetic = write_generation_dir(tmp_path / "synthetic", [Image.new("L", (16, 16), 20 * i) for i in range(12)])
    out = tmp_path / "labels"
    assert run(label(synthetic, out), capsys)[0] == 0
    outside = tmp_path / "precious.json"
    outside.write_text("mine")
    (out / "surrogate_labels.json").unlink()
    (out / "surrogate_labels.json").symlink_to(outside)
    code, _, err = run(label(synthetic, out), capsys)
    assert code == 2 and "surrogate_labels.json" in err and outside.read_text() == "mine", err
