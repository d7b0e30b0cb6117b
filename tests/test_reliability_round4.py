"""Reliability round four: defects of issue 21's third probe whose fixes are checked here (each failed on main before).

Tests drive the `side` command in process through `test_reliability.run`, which also asserts that every failure is
one line without a traceback.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_reliability import no_model_loading, run  # noqa: F401 (no_model_loading is a fixture, used by name)


def _save_pngs(folder: Path, size: int, count: int, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    for i in range(count):
        Image.fromarray((rng.random((size, size)) * 255).astype("uint8")).save(folder / f"{prefix}{i}.png")

def test_evaluate_names_the_set_whose_images_have_mixed_sizes(tmp_path, capsys):
    # main: "Images have mixed sizes [(8, 8), (12, 12)]" without saying which of the two sets
    generated, reference = tmp_path / "generated", tmp_path / "reference"
    _save_pngs(generated, 8, 3, "a")
    _save_pngs(generated, 12, 2, "b")
    _save_pngs(reference, 8, 4, "r")
    code, _, err = run(["evaluate", "--generated", generated, "--reference", reference, "--output", tmp_path / "out"], capsys)
    assert code == 2 and f"Images of '{generated}' have mixed sizes" in err and "--resolution" in err, err


def test_push_recognises_a_renamed_matches_table_by_its_columns(tmp_path, capsys, monkeypatch):
    # main: only a file named matches.parquet counted; the same table as audit.parquet was uploaded, public by default
    from test_reliability import save_ddpm

    from conftest import write_generation_dir

    reference = tmp_path / "reference"
    _save_pngs(reference, 16, 4, "r")
    generated = write_generation_dir(tmp_path / "side", [Image.new("L", (16, 16), 60 * i) for i in range(4)], method="side")
    assert run(["evaluate", "--generated", generated, "--reference", reference, "--output", tmp_path / "eval"], capsys)[0] == 0
    pipeline = save_ddpm(tmp_path / "pipeline")
    (pipeline / "README.md").write_text("---\nlibrary_name: diffusers\n---\n# card")
    (pipeline / "notes").mkdir()
    (tmp_path / "eval" / "matches.parquet").rename(pipeline / "notes" / "audit.parquet")
    uploads = []
    monkeypatch.setattr("huggingface_hub.create_repo", lambda repo_id, **kw: uploads.append(kw["private"]) or type("R", (), {"repo_id": repo_id}))
    monkeypatch.setattr("huggingface_hub.upload_folder", lambda **kwargs: "commit-url")
    code, _, err = run(["push", pipeline, "--repo", "me/side-audit"], capsys)
    assert code == 2 and "notes/audit.parquet" in err and "--include-training-matches" in err and uploads == [], err
    (pipeline / "notes" / "audit.parquet").unlink()
    (pipeline / "notes" / "other.parquet").write_bytes(b"not parquet")  # an unreadable file is not a matches table
    assert run(["push", pipeline, "--repo", "me/side-audit"], capsys)[0] == 0 and uploads == [False]


@pytest.mark.parametrize("listed", [["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                                     "scheduler/scheduler_config.json"], ["../outside.txt"], ["notes.txt"]])
def test_a_forged_manifest_cannot_make_label_delete_what_it_did_not_write(tmp_path, capsys, listed):
    # main: a `.side_outputs.json` claiming kind "labels" and listing a pipeline's files made `side label` replace the
    # pipeline folder (exit 0, the model gone); it now deletes only names `side label` can have written
    from test_reliability import save_ddpm
    from test_reliability_round2 import label, snapshot

    from conftest import write_generation_dir

    synthetic = write_generation_dir(tmp_path / "synthetic", [Image.new("L", (16, 16), 20 * i) for i in range(12)])
    victim = save_ddpm(tmp_path / "victim")
    (victim / "notes.txt").write_text("mine")
    (tmp_path / "outside.txt").write_text("mine too")
    files = listed if listed[0] != "model_index.json" else [p.relative_to(victim).as_posix() for p in victim.rglob("*") if p.is_file()]
    (victim / ".side_outputs.json").write_text(json.dumps({"kind": "labels", "files": files}))
    before = snapshot(victim)
    code, _, err = run(label(synthetic, victim), capsys)
    assert code == 2 and "did not write" in err and "model_index.json" in err, err
    assert snapshot(victim) == before and (tmp_path / "outside.txt").read_text() == "mine too"


def test_candidates_output_refuses_other_artefacts(tmp_path, capsys):
    # main: `side candidates --output` wrote its list and figure into a pipeline folder or another run
    from test_reliability import save_ddpm
    from test_reliability_round2 import snapshot

    from conftest import write_generation_dir

    images = tmp_path / "images"
    _save_pngs(images, 16, 6, "g")
    pipeline = save_ddpm(tmp_path / "pipeline")
    other_run = write_generation_dir(tmp_path / "other", [Image.new("L", (16, 16), 30 * i) for i in range(4)])
    for folder in (pipeline, other_run):
        before = snapshot(folder)
        code, _, err = run(["candidates", "--generated", images, "--output", folder], capsys)
        assert code == 2 and "`side candidates`" in err and str(folder) in err, err
        assert snapshot(folder) == before
    for _ in range(2):  # a new folder, then the same list again
        assert run(["candidates", "--generated", images, "--output", tmp_path / "list"], capsys)[0] == 0
    assert run(["candidates", "--generated", other_run, "--output", other_run], capsys)[0] == 0  # beside its generations


def test_a_replaced_random_states_pickle_is_named_on_resume_not_skipped(tmp_path, capsys):
    # main: accelerate skips RNG states it cannot read ("Could not load random states", at info level), so a checkpoint
    # whose random_states_0.pkl was replaced by a payload resumed without a word; it is now refused by name, unrun
    import pickle

    from test_reliability import save_ddpm, write_labels
    from test_reliability_round2 import TRAIN_FAST, Payload

    target, labels, output = save_ddpm(tmp_path / "target"), write_labels(tmp_path / "labels"), tmp_path / "run"
    argv = ["train-classifier", "--pretrained_model_name_or_path", target, "--train_data_dir", labels, *TRAIN_FAST,
            "--output_dir", output, "--checkpointing_steps", "1"]
    assert run(argv, capsys)[0] == 0
    states = output / "checkpoint-1" / "random_states_0.pkl"
    assert states.is_file()
    marker = tmp_path / "payload-ran"
    states.write_bytes(pickle.dumps(Payload(marker)))
    code, _, err = run([*argv, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"], capsys)
    assert code == 2 and str(states) in err and "were not run" in err and not marker.exists(), err


@pytest.mark.parametrize("argv", [
    ["synthesize", "--pipeline", "default", "--num-samples", "10000000000000", "--output", "OUT"],
    ["extract", "--pipeline", "default", "--method", "uncond", "--num-images", "10000001", "--output", "OUT"],
    ["demo", "--num-images", "99999999999", "--output", "OUT"],
    ["sweep", "--pipeline", "default", "--method", "side", "--guidance-scales", "0,1", "--num-images", "10000000000",
     "--reference", "default", "--output", "OUT"],
])
@pytest.mark.usefixtures("no_model_loading")
def test_absurd_image_counts_are_refused_before_any_work(tmp_path, capsys, argv):
    # main: `side synthesize --num-samples 10000000000000` started sampling (a typo that fills the disk)
    out = tmp_path / "out"
    code, _, err = run([out if a == "OUT" else a for a in argv], capsys)
    assert code == 2 and "at most 10,000,000 images" in err, err
    assert not out.exists()


def test_generation_settings_refuse_absurd_image_counts():
    from diffusers_side.generation.settings import GenerationSettings

    settings = GenerationSettings(pipeline="default", method="uncond", num_images=10**13)
    with pytest.raises(ValueError, match="num_images=10,000,000,000,000 is more than 10,000,000"):
        settings.validate()


def test_shards_are_read_in_order_of_their_number_past_five_digits(tmp_path):
    # main: sorted by name, so shard-100000 came before shard-20000 (a run of more than 99,999 shards read out of order)
    from diffusers_side.storage.generation_folder import shard_files, shard_path

    for shard in (3, 20000, 99999, 100000, 123456):
        shard_path(tmp_path, shard).parent.mkdir(exist_ok=True)
        shard_path(tmp_path, shard).write_bytes(b"")
    assert [p.name for p in shard_files(tmp_path)] == [
        "shard-00003.parquet", "shard-20000.parquet", "shard-99999.parquet", "shard-100000.parquet", "shard-123456.parquet"]


def test_a_generation_record_without_pipeline_is_named(tmp_path, capsys, monkeypatch):
    # main: `side push` of such a folder died with "GenerationSettings.__init__() missing 1 required positional argument"
    from conftest import write_generation_dir

    folder = write_generation_dir(tmp_path / "run", [Image.new("L", (16, 16), 20 * i) for i in range(4)], method="side",
                                  guidance_scale=1.0)
    monkeypatch.setattr("huggingface_hub.create_repo", lambda *a, **k: pytest.fail("the Hub was called"))
    code, _, err = run(["push", folder, "--repo", "me/x"], capsys)
    assert code == 2 and f"{folder / 'generation.json'} records no pipeline" in err, err


@pytest.mark.parametrize("eta", [float("nan"), float("inf"), -0.5, "1"])
def test_eta_must_be_a_finite_number(tiny_unet, eta):
    # main: eta=nan turned every DDIM image into NaN (black after postprocessing) without a word
    import torch
    from diffusers import DDIMScheduler

    from diffusers_side.pipelines.pipeline_side import SIDEPipeline

    pipe = SIDEPipeline(tiny_unet, DDIMScheduler(num_train_timesteps=50))
    with pytest.raises(ValueError, match=r"eta=.* must be a finite number >= 0"):
        pipe(batch_size=1, num_inference_steps=2, eta=eta, generator=torch.manual_seed(0))


def _label_output(tmp_path: Path) -> Path:
    from conftest import write_generation_dir
    from diffusers_side.labels import surrogate_labels

    synthetic = write_generation_dir(tmp_path / "synthetic", [Image.new("L", (16, 16), 20 * i) for i in range(12)])
    assert surrogate_labels.label_synthetic(synthetic, tmp_path / "labels", num_clusters=3, cohesion=-1, features="pixels")
    return tmp_path / "labels"


@pytest.mark.parametrize("damaged", ["state.json", "arrow"])
def test_a_damaged_saved_data_set_is_named(tmp_path, capsys, damaged):
    # main: "Unterminated string starting at: line 4 column 19" / "Expected to be able to read 33680 bytes", no file named
    labels = _label_output(tmp_path)
    path = labels / "state.json" if damaged == "state.json" else next(labels.glob("data-*.arrow"))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    generated = tmp_path / "generated"
    _save_pngs(generated, 16, 3, "g")
    code, _, err = run(["evaluate", "--generated", generated, "--reference", labels, "--output", tmp_path / "out"], capsys)
    assert code == 2 and f"{labels} is a damaged saved data set" in err and "write it again" in err, err


def test_a_damaged_candidate_list_is_named(tmp_path, capsys):
    # main: "Invalid control character at: line 1 column 10 (char 9)" without the file
    from conftest import write_generation_dir

    folder = write_generation_dir(tmp_path / "run", [Image.new("L", (16, 16), 20 * i) for i in range(6)], pipeline="default")
    assert run(["candidates", "--generated", folder], capsys)[0] == 0
    (folder / "candidates.json").write_text('{"num_gen')
    reference = tmp_path / "reference"
    _save_pngs(reference, 16, 4, "r")
    code, _, err = run(["evaluate", "--generated", folder, "--reference", reference, "--output", tmp_path / "out"], capsys)
    assert code == 2 and f"{folder / 'candidates.json'} is damaged: it is truncated or not JSON" in err, err


@pytest.mark.parametrize("command", [["divergence", "--reference", "default"],
                                     ["query-only", "--classifier", "CLS", "--queries", "4"]])
def test_audits_refuse_a_lora_side_result_before_loading_it(tmp_path, capsys, command):
    # main: `side divergence --pipeline <train-lora folder>` loaded it and failed inside the ODE with
    # "class_labels should be provided when doing class conditioning"
    from test_reliability import save_ddpm

    from diffusers_side.pipelines.pipeline_side_lora import SIDELoRAPipeline

    base = save_ddpm(tmp_path / "base")
    lora = tmp_path / "lora-side"
    SIDELoRAPipeline.from_base(str(base), num_labels=3, rank=2).save_pretrained(lora)
    argv = [tmp_path / "cls" if a == "CLS" else a for a in command]
    code, _, err = run([argv[0], "--pipeline", lora, *argv[1:], "--output", tmp_path / "out"], capsys)
    assert code == 2 and "is a LoRA-SIDE result" in err and f"pass its base model '{base}'" in err, err
    assert not (tmp_path / "out").exists()


def test_label_features_file_holding_a_pickle_is_refused_unrun(tmp_path, capsys):
    # --features FILE.pt takes TorchScript only: a torch.save pickle with a payload is named and never unpickled
    import pickle

    import torch
    from test_reliability_round2 import Payload

    from conftest import write_generation_dir

    marker = tmp_path / "payload-ran"
    features = tmp_path / "sscd.pt"
    torch.save({"model": Payload(marker)}, features)
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(Payload(marker)))
    synthetic = write_generation_dir(tmp_path / "synthetic", [Image.new("L", (16, 16), 20 * i) for i in range(12)])
    for path in (features, tmp_path / "raw.pt"):
        code, _, err = run(["label", "--synthetic", synthetic, "--output", tmp_path / "labels", "--features", path,
                            "--clusters", "3"], capsys)
        assert code == 2 and f"{path} is not a TorchScript model" in err and not marker.exists(), err
