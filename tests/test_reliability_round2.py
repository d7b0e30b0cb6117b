"""Nothing lost, nothing leaked, nothing silently wrong, round two: one test per defect of issue 21.

Defects 4, 9, 10 and 14 (guidance window, embedded-name shadowing, SIDEPipeline step/batch checks, the sweep's
side-exemplar) are tested with their fixes elsewhere. The tests drive the `side` command in process (through
`test_reliability.run`, which also asserts that every failure is one line without a traceback) and public
functions only.
"""

import json
import os
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow.parquet
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from test_reliability import (  # noqa: F401 (no_model_loading is a fixture)
    STEPS,
    TRAIN_FAST,
    no_model_loading,
    run,
    save_ddpm,
    save_side_pipeline,
    smooth_images,
    write_labels,
)

from conftest import write_generation_dir
from diffusers_side.generation.engine import RECORD_FEATURES
from diffusers_side.labels import surrogate_labels
from diffusers_side.pipelines.pipeline_side_lora import SIDELoRAPipeline
from diffusers_side.storage.data import images_to_tensor

LABEL = ["--features", "pixels", "--clusters", "3", "--cohesion", "-1"]


def label(synthetic: Path, output: Path) -> list:
    return ["label", "--synthetic", synthetic, "--output", output, *LABEL]


def image_folder(path: Path, images) -> Path:
    path.mkdir(parents=True)
    for index, image in enumerate(images):
        image.save(path / f"{index}.png")
    return path


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims width x height pixels (5x Pillow's hard limit) over a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    """A tiny SIDE pipeline folder (1x16x16 UNet, 50-step DDIM, a 3-label time-dependent classifier)."""
    return save_side_pipeline(tmp_path_factory.mktemp("pipe") / "side-pipeline")


@pytest.fixture
def no_embedding(monkeypatch):
    """Fail if `side label` starts embedding (its inputs and output must be checked before)."""

    def fail(*args, **kwargs):
        raise AssertionError("embedding started before the output was checked")

    monkeypatch.setattr(surrogate_labels, "embed_images", fail)


@pytest.fixture
def labels_dir(tmp_path) -> Path:
    """A real `side label` output (pixel features, 3 clusters) of 12 smooth 16x16 images."""
    synthetic = write_generation_dir(tmp_path / "synthetic", smooth_images(12))
    output = tmp_path / "labels"
    assert surrogate_labels.label_synthetic(synthetic, output, num_clusters=3, cohesion=-1, features="pixels")
    return output


# --- 1-2: data loss and leaks ------------------------------------------------------------------------


def test_1_label_rerun_deletes_only_the_files_its_manifest_lists(tmp_path, capsys):
    synthetic = write_generation_dir(tmp_path / "synthetic", smooth_images(12))
    output = tmp_path / "labels"
    assert run(label(synthetic, output), capsys)[0] == 0
    (output / "data-mynotes.arrow").write_text("mine")  # matches the `data-*.arrow` of save_to_disk
    code, _, err = run(label(synthetic, output), capsys)
    assert code == 2 and "data-mynotes.arrow" in err and (output / "data-mynotes.arrow").read_text() == "mine"
    (output / "data-mynotes.arrow").unlink()

    (output / "dataset_info.json").unlink()  # a user folder named like one of its files
    (output / "dataset_info.json").mkdir()
    (output / "dataset_info.json" / "x.txt").write_text("mine")
    code, _, err = run(label(synthetic, output), capsys)
    assert code == 2 and "dataset_info.json" in err and (output / "dataset_info.json" / "x.txt").read_text() == "mine"
    shutil.rmtree(output / "dataset_info.json")

    assert run(label(synthetic, output), capsys)[0] == 0  # only its own files: replaced
    listed = json.loads((output / ".side_outputs.json").read_text())
    assert listed["kind"] == "labels" and sorted(listed["files"]) == sorted(p.name for p in output.iterdir() if p.name != ".side_outputs.json")

    (output / ".side_outputs.json").unlink()  # an output written before manifests: its files are known by name
    (output / "data-mynotes.arrow").write_text("mine")
    code, _, err = run(label(synthetic, output), capsys)
    assert code == 2 and "data-mynotes.arrow" in err and (output / "data-mynotes.arrow").exists()


def test_2_evaluate_refuses_other_artefacts_and_push_refuses_training_matches(tmp_path, pipe_dir, labels_dir, capsys, monkeypatch):
    reference = image_folder(tmp_path / "reference", smooth_images(4, seed=1))
    generated = write_generation_dir(tmp_path / "side", smooth_images(4, seed=2), method="side", guidance_scale=1.0)
    pipeline = tmp_path / "pipeline"
    shutil.copytree(pipe_dir, pipeline)
    (pipeline / "README.md").write_text("---\nlibrary_name: diffusers\n---\n# card")
    other_run = write_generation_dir(tmp_path / "uncond", smooth_images(4, seed=3), method="uncond")
    for folder in (pipeline, labels_dir, other_run):
        before = snapshot(folder)
        code, _, err = run(["evaluate", "--generated", generated, "--reference", reference, "--output", folder], capsys)
        assert code == 2 and "not `side evaluate`'s to overwrite" in err, err
        assert snapshot(folder) == before

    uploads = []
    monkeypatch.setattr("huggingface_hub.create_repo", lambda repo_id, **kw: uploads.append(kw["private"]) or type("R", (), {"repo_id": repo_id}))
    monkeypatch.setattr("huggingface_hub.upload_folder", lambda **kwargs: "commit-url")
    report = tmp_path / "pipeline-eval"
    assert run(["evaluate", "--generated", generated, "--reference", reference, "--output", report], capsys)[0] == 0
    shutil.copytree(report, pipeline / "audit")  # an evaluation kept beside the model, as an earlier version allowed
    code, _, err = run(["push", pipeline, "--repo", "me/side-audit"], capsys)
    assert code == 2 and "matches.parquet" in err and "--include-training-matches" in err and uploads == []
    assert run(["push", pipeline, "--repo", "me/side-audit", "--include-training-matches"], capsys)[0] == 0
    assert run(["push", pipeline, "--repo", "me/side-audit", "--include-training-matches", "--public"], capsys)[0] == 0
    assert uploads == [True, False]  # private unless --public, although a model repo is public by default


# --- 3-8: silent wrong results -----------------------------------------------------------------------


def test_3_resume_refuses_a_scheduler_config_changed_since_the_run_started(tmp_path, capsys):
    model, output = save_ddpm(tmp_path / "model"), tmp_path / "synthetic"
    argv = ["synthesize", "--pipeline", model, "--num-samples", "8", *STEPS, "--output", output]
    assert run(argv, capsys)[0] == 0
    (output / "shards" / "shard-00001.parquet").unlink()  # as if killed after the first shard
    config_file = model / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "beta_end": 0.03}))  # same weights, another noise schedule
    code, _, err = run(argv, capsys)
    assert code == 2 and "scheduler_config.json" in err and "changed" in err
    assert not (output / "shards" / "shard-00001.parquet").exists()
    config_file.write_text(json.dumps(config))
    assert run(argv, capsys)[0] == 0  # restored: resumes


def test_5_train_classifier_refuses_a_train_lora_folder_as_its_target(tmp_path, capsys):
    base = save_ddpm(tmp_path / "base")
    lora = tmp_path / "lora-side"
    SIDELoRAPipeline.from_base(str(base), num_labels=3, rank=2).save_pretrained(lora)
    labels = write_labels(tmp_path / "labels")
    argv = ["train-classifier", "--pretrained_model_name_or_path", lora, "--train_data_dir", labels, *TRAIN_FAST]
    code, _, err = run([*argv, "--output_dir", tmp_path / "out"], capsys)
    assert code == 2 and "LoRA-SIDE result" in err and str(base) in err
    assert not (tmp_path / "out").exists()


def test_6_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    sixteen = PIL.Image.fromarray(np.array([[0, 16384], [32768, 65535]], dtype=np.uint16))
    assert sixteen.mode == "I;16"
    sixteen.save(tmp_path / "sixteen.png")
    expected = torch.tensor([0, 64, 128, 255]) / 255
    for image in (sixteen, PIL.Image.open(tmp_path / "sixteen.png"), sixteen.convert("I")):
        assert torch.allclose(images_to_tensor([image]).flatten(), expected, atol=0.5 / 255), image.mode
    unit = PIL.Image.fromarray(np.array([[0, 0.25], [0.5, 1]], dtype=np.float32))
    assert unit.mode == "F"
    assert torch.allclose(images_to_tensor([unit]).flatten(), torch.tensor([0, 0.25, 0.5, 1]), atol=0.5 / 255)
    assert torch.allclose(images_to_tensor([unit], channels=3)[0, 2].flatten(), torch.tensor([0, 0.25, 0.5, 1]), atol=0.5 / 255)
    eight_bit_scale = PIL.Image.fromarray(np.array([[0, 64], [128, 255]], dtype=np.float32))
    assert torch.allclose(images_to_tensor([eight_bit_scale]).flatten(), expected, atol=0.5 / 255)
    with pytest.raises(ValueError, match=r"values in \[0, 1000\]"):
        images_to_tensor([PIL.Image.fromarray(np.array([[0, 1000]], dtype=np.float32))])


def test_7_evaluate_refuses_an_unfinished_generation_run(tmp_path, capsys):
    reference = image_folder(tmp_path / "reference", smooth_images(4, seed=1))
    generated = write_generation_dir(tmp_path / "side", smooth_images(4, seed=2), method="side", guidance_scale=1.0)
    settings = json.loads((generated / "generation.json").read_text())
    (generated / "generation.json").write_text(json.dumps({**settings, "num_images": 8, "batch_size": 4}))  # shard 1 lost
    code, _, err = run(["evaluate", "--generated", generated, "--reference", reference, "--output", tmp_path / "e"], capsys)
    assert code == 2 and "4 of the 8 images" in err and "[1]" in err and "N_G = 4" in err
    assert not (tmp_path / "e").exists()


def test_8_sparse_label_ids_are_refused_instead_of_training_a_huge_classifier(tmp_path, capsys):
    target = save_ddpm(tmp_path / "target")
    images = smooth_images(6)
    features = Features({"image": Image(), "label": Value("int64")})
    labels = tmp_path / "labels"
    Dataset.from_dict({"image": images, "label": [0, 1, 10**6] * 2}, features=features).save_to_disk(str(labels))
    argv = ["train-classifier", "--pretrained_model_name_or_path", target, "--train_data_dir", labels, *TRAIN_FAST]
    code, _, err = run([*argv, "--output_dir", tmp_path / "out"], capsys)
    assert code == 2 and "3 distinct labels" in err and "--num_classes 1000001" in err
    assert not (tmp_path / "out").exists()


# --- 11-13: late validation --------------------------------------------------------------------------


@pytest.mark.usefixtures("no_model_loading")
def test_11_demo_checks_target_and_reference_shapes_before_any_stage(tmp_path, capsys):
    target = save_ddpm(tmp_path / "target8", sample_size=8)
    demo = tmp_path / "demo"
    code, _, err = run(["demo", "--quick", "--pipeline", target, "--reference", "default", "--output", demo], capsys)
    assert code == 2 and "16x16" in err and "8x8" in err and "--reference" in err and "--resolution" not in err
    assert not demo.exists()


def test_12_steps_and_exemplar_shapes_are_checked_before_any_output(tmp_path, pipe_dir, capsys, monkeypatch):
    model, output = save_ddpm(tmp_path / "model"), tmp_path / "synthetic"  # 100 training timesteps
    argv = ["synthesize", "--pipeline", model, "--num-samples", "4", "--batch-size", "4", "--output", output]
    code, _, err = run([*argv, "--num-inference-steps", "101"], capsys)
    assert code == 2 and "--num-inference-steps 101" in err and "100 timesteps" in err and not output.exists()
    output.mkdir()  # a run refused at sampling by an earlier version left its generation.json and no shard
    (output / "generation.json").write_text(json.dumps({"pipeline": str(model), "method": "synthetic", "num_images": 4}))
    assert run([*argv, "--num-inference-steps", "2"], capsys)[0] == 0  # the corrected run takes the empty run over

    small = write_generation_dir(tmp_path / "small", [image.resize((8, 8)) for image in smooth_images(12)])
    assert run(label(small, tmp_path / "labels8"), capsys)[0] == 0
    extract = ["extract", "--pipeline", pipe_dir, "--method", "side-exemplar", "--exemplars", tmp_path / "labels8",
               "--num-images", "2", *STEPS, "--output", tmp_path / "x"]
    code, _, err = run(extract, capsys)
    assert code == 2 and "8x8" in err and "16x16" in err and not (tmp_path / "x").exists()


def test_13_sweep_push_and_label_outputs_fail_before_any_work(tmp_path, pipe_dir, capsys, no_embedding):
    sweep = ["sweep", "--pipeline", pipe_dir, "--num-images", "2", *STEPS, "--output", tmp_path / "sweep"]
    code, _, err = run([*sweep, "--reference", "someone/not-in-the-cache", "--guidance-scales", "0,1"], capsys)
    assert code == 2 and "someone/not-in-the-cache" in err and not (tmp_path / "sweep").exists()
    code, _, err = run([*sweep, "--guidance-scales", "1,1.0000001"], capsys)
    assert code == 2 and "scale-1" in err and not (tmp_path / "sweep").exists()

    # HF_HUB_OFFLINE=1 (conftest): the repo cannot be created, so nothing is generated or trained
    extract = ["extract", "--pipeline", pipe_dir, "--method", "uncond", "--num-images", "2", *STEPS, "--output", tmp_path / "x"]
    code, _, err = run([*extract, "--push-to-hub", "me/candidates"], capsys)
    assert code == 2 and "--push-to-hub me/candidates" in err and not (tmp_path / "x").exists()
    labels = write_labels(tmp_path / "labels")
    train = ["train-classifier", "--pretrained_model_name_or_path", pipe_dir, "--train_data_dir", labels, *TRAIN_FAST]
    code, _, err = run([*train, "--output_dir", tmp_path / "c", "--push_to_hub", "--hub_model_id", "me/c"], capsys)
    assert code == 2 and "--push_to_hub me/c" in err and not (tmp_path / "c").exists()

    synthetic = write_generation_dir(tmp_path / "synthetic", smooth_images(12))
    (tmp_path / "a-file").write_text("")
    for unwritable in (tmp_path / "a-file" / "labels", Path("/proc/side-labels")):
        code, _, err = run(label(synthetic, unwritable), capsys)
        assert code == 2 and str(unwritable) in err  # `no_embedding`: refused before any feature was computed


# --- 15-16: errors -----------------------------------------------------------------------------------


def test_15_decompression_bombs_are_refused_by_name(tmp_path, capsys, no_embedding):
    reference = image_folder(tmp_path / "reference", smooth_images(3, seed=1))
    (reference / "bomb.png").write_bytes(bomb_png())
    generated = write_generation_dir(tmp_path / "side", smooth_images(4, seed=2), method="side", guidance_scale=1.0)
    code, _, err = run(["evaluate", "--generated", generated, "--reference", reference, "--output", tmp_path / "e"], capsys)
    assert code == 2 and "bomb.png" in err and "decompression bomb" in err

    synthetic = write_generation_dir(tmp_path / "synthetic", smooth_images(12))
    shard = synthetic / "shards" / "shard-00000.parquet"
    table = Dataset(pyarrow.parquet.read_table(shard)).cast_column("image", Image(decode=False)).to_dict()
    table["image"][5] = {"bytes": bomb_png(), "path": None}
    Dataset.from_dict(table, features=RECORD_FEATURES).to_parquet(str(shard))
    code, _, err = run(label(synthetic, tmp_path / "labels"), capsys)
    assert code == 2 and "Image 5" in err and "decompression bomb" in err


class Payload:
    """A pickle that would create a file if it were ever unpickled with the full unpickler."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_15_damaged_or_pickled_checkpoint_files_are_named_on_resume(tmp_path, capsys):
    target, labels, output = save_ddpm(tmp_path / "target"), write_labels(tmp_path / "labels"), tmp_path / "run"
    argv = ["train-classifier", "--pretrained_model_name_or_path", target, "--train_data_dir", labels, *TRAIN_FAST,
            "--output_dir", output, "--checkpointing_steps", "1"]
    assert run(argv, capsys)[0] == 0
    resume = [*argv, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"]
    checkpoint = output / "checkpoint-1"
    weights, optimizer = checkpoint / "model.safetensors", checkpoint / "optimizer.bin"
    saved = weights.read_bytes()
    weights.write_bytes(saved[: len(saved) // 2])
    code, _, err = run(resume, capsys)
    assert code == 2 and str(weights) in err and "Delete" in err
    weights.write_bytes(saved)
    marker = tmp_path / "payload-ran"
    optimizer.write_bytes(pickle.dumps(Payload(marker)))
    code, _, err = run(resume, capsys)
    assert code == 2 and str(optimizer) in err and not marker.exists()
    (checkpoint / "training_state.json").write_text('{"global_step": 1,\n')
    code, _, err = run(resume, capsys)
    assert code == 2 and "training_state.json is damaged" in err and "truncated" in err


def test_15_disk_full_while_label_writes_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    synthetic = write_generation_dir(tmp_path / "synthetic", smooth_images(12))
    output = tmp_path / "labels"

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 10)
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    monkeypatch.setattr(surrogate_labels, "save_file", full_disk, raising=False)  # where an earlier version bound it
    code, _, err = run(label(synthetic, output), capsys)
    assert code == 2 and "surrogate_labels.safetensors" in err and "disk" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]  # no output, no staging folder


def test_15_edited_surrogate_labels_json_is_named_not_an_index_error(tmp_path, pipe_dir, labels_dir, capsys):
    sidecar = labels_dir / "surrogate_labels.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "kept_cluster_ids": [0, 1, 99]}))
    extract = ["extract", "--pipeline", pipe_dir, "--method", "side-exemplar", "--exemplars", labels_dir,
               "--num-images", "2", *STEPS, "--output", tmp_path / "x"]
    code, _, err = run(extract, capsys)
    assert code == 2 and "surrogate_labels.json is damaged" in err and "kept_cluster_ids" in err


def test_16_damaged_state_files_are_named_with_what_is_wrong(tmp_path, pipe_dir, labels_dir, capsys):
    output = tmp_path / "generated"
    argv = ["synthesize", "--pipeline", pipe_dir, "--num-samples", "8", *STEPS, "--output", output]
    assert run(argv, capsys)[0] == 0
    settings = output / "generation.json"
    text = settings.read_text()
    for damaged, says in ((text[: len(text) // 2], "truncated"), ("[]", "holds a list")):
        settings.write_text(damaged)
        code, _, err = run(argv, capsys)
        assert code == 2 and "generation.json is damaged" in err and says in err and "older" not in err

    sidecar = labels_dir / "surrogate_labels.json"
    sidecar.write_text(sidecar.read_text()[:40])
    train = ["train-classifier", "--pretrained_model_name_or_path", pipe_dir, "--train_data_dir", labels_dir, *TRAIN_FAST]
    code, _, err = run([*train, "--output_dir", tmp_path / "c"], capsys)
    assert code == 2 and "surrogate_labels.json is damaged" in err

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run_config.json").write_text('{"script": "train_classifier",')
    code, _, err = run([*train, "--output_dir", run_dir, "--resume_from_checkpoint", "latest"], capsys)
    assert code == 2 and "run_config.json is damaged" in err


def test_16_label_rerun_into_a_symlinked_output_replaces_the_folder_it_names(tmp_path, capsys):
    synthetic = write_generation_dir(tmp_path / "synthetic", smooth_images(12))
    real, link = tmp_path / "real-labels", tmp_path / "labels"
    assert run(label(synthetic, real), capsys)[0] == 0
    link.symlink_to(real, target_is_directory=True)
    assert run(label(synthetic, link), capsys)[0] == 0
    assert link.is_symlink() and (link / "surrogate_labels.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "real-labels", "synthetic"]
