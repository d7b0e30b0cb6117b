"""Nothing lost, nothing leaked, nothing silently wrong: one test per defect of issue 14.

The tests drive the `side` command (in process, or as a child process where imports matter) and
public functions only, so they hold however the code behind the commands is arranged.
"""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler
from huggingface_hub import DatasetCard

from conftest import make_tiny_unet, subprocess_env, write_generation_dir
from diffusers_side import SIDEPipeline, TimeDependentClassifier
from diffusers_side.cli import main as side

STEPS = ["--num-inference-steps", "2", "--batch-size", "4"]
TRAIN_FAST = ["--base_channels", "4", "--train_batch_size", "8", "--max_train_steps", "1", "--validation_split", "0"]


def run(argv, capsys) -> tuple[int, str, str]:
    """Run `side argv`; on failure the error must be one line naming the command, without a traceback."""
    try:
        code = side([str(a) for a in argv])
    except SystemExit as exit:  # argument errors exit from argparse
        code = exit.code
    out, err = capsys.readouterr()
    if code != 0:  # progress bars may precede it on stderr
        errors = [line for line in err.splitlines() if ": error:" in line]
        assert code == 2 and "Traceback" not in err, err
        assert errors == [err.strip().splitlines()[-1]] and errors[0].startswith(f"side {argv[0]}: error:"), err
    return code, out, err


def save_side_pipeline(path: Path, seed: int = 0) -> Path:
    """A tiny SIDE pipeline folder (1x16x16 UNet, DDIM, time-dependent classifier with 3 labels)."""
    torch.manual_seed(seed)
    classifier = TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=3, base_channels=4)
    SIDEPipeline(make_tiny_unet(seed=seed), DDIMScheduler(num_train_timesteps=50), classifier.eval()).save_pretrained(path)
    return path


def save_ddpm(path: Path, sample_size: int = 16, seed: int = 0) -> Path:
    DDPMPipeline(unet=make_tiny_unet(sample_size=sample_size, seed=seed), scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(path)
    return path


def write_labels(path: Path, size: int = 16, count: int = 12) -> Path:
    """A labelled set as `side label` writes it (image, label, distance, seed), without the sidecar."""
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (size, size)).astype(np.uint8), mode="L") for _ in range(count)]
    features = Features({"image": Image(), "label": Value("int64"), "distance": Value("float32"), "seed": Value("int64")})
    columns = {"image": images, "label": [i % 3 for i in range(count)], "distance": [0.1] * count, "seed": list(range(count))}
    Dataset.from_dict(columns, features=features).save_to_disk(str(path))
    return path


def smooth_images(count: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(np.kron(rng.integers(0, 256, (4, 4)), np.ones((4, 4))).astype(np.uint8), mode="L") for _ in range(count)]


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    return save_side_pipeline(tmp_path_factory.mktemp("pipe") / "side-pipeline")


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if any diffusers model or pipeline is loaded (input must be checked before)."""
    from diffusers import DiffusionPipeline, ModelMixin

    def fail(cls, *args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(ModelMixin, "from_pretrained", classmethod(fail))
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(fail))


# --- 1-4: data loss and privacy -------------------------------------------------------------------


def test_label_rerun_never_deletes_files_it_did_not_write(tmp_path, capsys):
    synthetic = write_generation_dir(tmp_path / "synthetic", smooth_images(12))
    output = tmp_path / "labels"
    argv = ["label", "--synthetic", synthetic, "--output", output, "--features", "pixels", "--clusters", "3", "--cohesion", "-1"]
    assert run(argv, capsys)[0] == 0
    (output / "notes.txt").write_text("mine")
    (output / "keep").mkdir()
    (output / "keep" / "x.txt").write_text("mine too")
    code, _, err = run(argv, capsys)
    assert (output / "notes.txt").read_text() == "mine" and (output / "keep" / "x.txt").read_text() == "mine too"
    assert code == 2 and "notes.txt" in err


def test_extraction_data_sets_are_pushed_private_unless_public(tmp_path, pipe_dir, capsys, monkeypatch):
    pushed = []
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo_id, **kwargs: pushed.append(kwargs.get("private")))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo_id, **kwargs: None)
    created = []  # `side extract --push-to-hub` creates the repo before generating (issue 21: offline fails early)
    monkeypatch.setattr("huggingface_hub.create_repo", lambda repo_id, **kwargs: created.append(kwargs["private"]) or type("R", (), {"repo_id": repo_id}))
    folder = write_generation_dir(tmp_path / "uncond", smooth_images(4), method="uncond", pipeline=str(pipe_dir))
    assert run(["push", folder, "--repo", "me/candidates"], capsys)[0] == 0
    assert run(["push", folder, "--repo", "me/candidates", "--public"], capsys)[0] == 0
    extract = ["extract", "--pipeline", pipe_dir, "--method", "uncond", "--num-images", "2", *STEPS, "--push-to-hub", "me/c"]
    assert run([*extract, "--output", tmp_path / "a"], capsys)[0] == 0
    assert run([*extract, "--output", tmp_path / "b", "--public"], capsys)[0] == 0
    assert pushed == [True, False, True, False] and created == [True, False]
    for command in ("push", "extract"):
        with pytest.raises(SystemExit):
            side([command, "--help"])
        assert "private" in capsys.readouterr().out


def test_overwrite_output_dir_keeps_what_is_not_a_training_run(tmp_path, capsys):
    target, labels = save_ddpm(tmp_path / "target"), write_labels(tmp_path / "labels")
    foreign = tmp_path / "foreign"
    (foreign / "my-checkpoint-notes").mkdir(parents=True)
    (foreign / "my-checkpoint-notes" / "x.txt").write_text("mine")
    base = ["train-classifier", "--pretrained_model_name_or_path", target, "--train_data_dir", labels, *TRAIN_FAST]
    code, _, err = run([*base, "--output_dir", foreign, "--overwrite_output_dir"], capsys)
    assert code == 2 and "holds no training run" in err
    assert (foreign / "my-checkpoint-notes" / "x.txt").exists()

    run_dir = tmp_path / "run"
    assert run([*base, "--output_dir", run_dir, "--checkpointing_steps", "1"], capsys)[0] == 0
    assert (run_dir / "checkpoint-1").is_dir()
    (run_dir / "keep-checkpoint-1-notes").mkdir()
    (run_dir / "keep-checkpoint-1-notes" / "x.txt").write_text("mine")
    assert run([*base, "--output_dir", run_dir, "--overwrite_output_dir"], capsys)[0] == 0
    assert (run_dir / "keep-checkpoint-1-notes" / "x.txt").exists() and not (run_dir / "checkpoint-1").exists()


def test_no_image_copies_outside_the_output_folders(tmp_path, pipe_dir, capsys, monkeypatch):
    cache = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    reference = tmp_path / "reference"
    reference.mkdir()
    for index, image in enumerate(smooth_images(6, seed=1)):
        image.save(reference / f"{index}.png")
    synthetic, labels = tmp_path / "synthetic", tmp_path / "labels"
    stale = tmp_path / ".labels.tmp-999999999"  # left by a killed `side label` (no such process)
    stale.mkdir()
    (stale / "data-00000-of-00001.arrow").write_bytes(b"half written")

    assert run(["synthesize", "--pipeline", pipe_dir, "--num-samples", "12", *STEPS, "--output", synthetic], capsys)[0] == 0
    assert run(["label", "--synthetic", synthetic, "--output", labels, "--clusters", "3", "--cohesion", "-1"], capsys)[0] == 0
    argv = ["train-classifier", "--pretrained_model_name_or_path", pipe_dir, "--train_data_dir", labels, *TRAIN_FAST]
    assert run([*argv, "--validation_split", "0.25", "--output_dir", tmp_path / "classifier"], capsys)[0] == 0
    assert run(["evaluate", "--generated", synthetic, "--reference", reference, "--output", tmp_path / "eval"], capsys)[0] == 0

    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*")), sorted(cache.rglob("*"))
    assert sorted(p.name for p in reference.iterdir()) == [f"{i}.png" for i in range(6)]
    assert not list(labels.glob("cache-*")) and not list(synthetic.rglob("cache-*"))
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --- 5-10: silent wrong results ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_guidance_scales_are_refused(tmp_path, pipe_dir, capsys, value):
    output = tmp_path / "side"
    argv = ["extract", "--pipeline", pipe_dir, "--method", "side", "--num-images", "2", *STEPS, "--output", output]
    code, _, err = run([*argv, f"--guidance-scale={value}"], capsys)
    assert code == 2 and "--guidance-scale" in err and value in err and not output.exists()
    code, _, err = run(["sweep", *argv[1:3], "--num-images", "2", "--guidance-scales", f"0,{value}", "--output", output], capsys)
    assert code == 2 and value in err and not output.exists()
    from diffusers_side.generation.engine import GenerationSettings

    with pytest.raises(ValueError, match="guidance_scale"):
        GenerationSettings(pipeline="default", method="side", num_images=2, guidance_scale=float(value)).validate()
    with pytest.raises(ValueError, match="must be finite"):
        SIDEPipeline.from_pretrained(pipe_dir)(batch_size=1, target=0, guidance_scale=float(value), num_inference_steps=1)


def test_evaluate_keeps_folders_apart_and_refuses_the_same_folder_twice(tmp_path, capsys):
    reference = write_generation_dir(tmp_path / "reference", smooth_images(4, seed=1))
    first = write_generation_dir(tmp_path / "a" / "side", smooth_images(8, seed=2), method="side", guidance_scale=1.0)
    second = write_generation_dir(tmp_path / "b" / "side", smooth_images(8, seed=3), method="side", guidance_scale=1.0, first_seed=500)
    code, _, err = run(["evaluate", "--generated", first, first, "--reference", reference, "--output", tmp_path / "e1"], capsys)
    assert code == 2 and "twice" in err
    assert run(["evaluate", "--generated", first, second, "--reference", reference, "--output", tmp_path / "e2"], capsys)[0] == 0
    report = json.loads((tmp_path / "e2" / "report.json").read_text())
    assert len(report["methods"]) == 2
    assert sorted(m["seeds"]["count"] for m in report["methods"].values()) == [8, 8]


def test_generation_json_names_the_model_absolutely_with_a_fingerprint(tmp_path, capsys, monkeypatch):
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    save_ddpm(first / "model", seed=0)
    save_ddpm(elsewhere / "model", seed=1)  # same relative name, other weights
    monkeypatch.chdir(first)
    assert run(["synthesize", "--pipeline", "model", "--num-samples", "12", *STEPS, "--output", "synthetic"], capsys)[0] == 0
    settings = json.loads((first / "synthetic" / "generation.json").read_text())
    assert settings["pipeline"] == str(first / "model")
    assert len(settings["model_fingerprint"]) == 64

    monkeypatch.chdir(elsewhere)
    label = ["label", "--synthetic", first / "synthetic", "--clusters", "3", "--cohesion", "-1"]
    assert run([*label, "--output", "labels"], capsys)[0] == 0
    save_ddpm(first / "model", seed=2)  # the recorded model's weights change
    code, _, err = run([*label, "--output", "labels-2"], capsys)
    assert code == 2 and "fingerprint" in err


def test_resume_refuses_weights_changed_since_the_run_started(tmp_path, capsys):
    model, output = save_ddpm(tmp_path / "model"), tmp_path / "synthetic"
    argv = ["synthesize", "--pipeline", model, "--num-samples", "8", *STEPS, "--output", output]
    assert run(argv, capsys)[0] == 0
    (output / "shards" / "shard-00001.parquet").unlink()  # as if killed after the first shard
    save_ddpm(model, seed=1)
    code, _, err = run(argv, capsys)
    assert code == 2 and "weights" in err and "changed" in err
    assert not (output / "shards" / "shard-00001.parquet").exists()


def test_train_classifier_refuses_labelled_images_of_another_size_than_the_target(tmp_path, capsys):
    target, labels = save_ddpm(tmp_path / "target8", sample_size=8), write_labels(tmp_path / "labels16", size=16)
    argv = ["train-classifier", "--pretrained_model_name_or_path", target, "--train_data_dir", labels, *TRAIN_FAST]
    code, _, err = run([*argv, "--output_dir", tmp_path / "out"], capsys)
    assert code == 2 and "16x16" in err and "8" in err
    assert not (tmp_path / "out" / "model_index.json").exists()


def test_output_folders_are_refused_or_replaced_never_mixed(tmp_path, pipe_dir, capsys):
    reference = tmp_path / "reference"
    reference.mkdir()
    for index, image in enumerate(smooth_images(4, seed=1)):
        image.save(reference / f"{index}.png")
    side_set = write_generation_dir(tmp_path / "side", smooth_images(4, seed=2), method="side", guidance_scale=1.0)
    uncond = write_generation_dir(tmp_path / "uncond", smooth_images(4, seed=3), method="uncond")

    code, _, err = run(["evaluate", "--generated", side_set, "--reference", reference, "--output", reference], capsys)
    assert code == 2 and sorted(p.name for p in reference.iterdir()) == [f"{i}.png" for i in range(4)]

    report_dir = tmp_path / "eval"
    assert run(["evaluate", "--generated", side_set, "--reference", reference, "--output", report_dir], capsys)[0] == 0
    assert run(["evaluate", "--generated", uncond, "--reference", reference, "--output", report_dir], capsys)[0] == 0
    figures = json.loads((report_dir / "report.json").read_text())["files"]["figures"].values()
    assert sorted(p.relative_to(report_dir).as_posix() for p in (report_dir / "figures").iterdir()) == sorted(figures)

    sweep = ["sweep", "--pipeline", pipe_dir, "--num-images", "2", *STEPS, "--reference", reference, "--output", tmp_path / "sweep"]
    assert run([*sweep, "--guidance-scales", "0,1"], capsys)[0] == 0
    code, _, err = run([*sweep, "--guidance-scales", "0,2"], capsys)
    assert code == 2 and "--guidance-scales" in err
    assert set(json.loads((tmp_path / "sweep" / "sweep.json").read_text())) == {"0", "1"}

    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "demo_config.json").write_text(json.dumps({"seed": 5}))
    code, _, err = run(["demo", "--quick", "--output", demo], capsys)
    assert code == 2 and json.loads((demo / "demo_config.json").read_text()) == {"seed": 5}
    assert sorted(p.name for p in demo.iterdir()) == ["demo_config.json"]


# --- 11-13: errors ---------------------------------------------------------------------------------


def test_bad_models_and_paths_give_one_line_errors(tmp_path, pipe_dir, capsys):
    def extract(pipeline, *extra, output="out"):
        argv = ["extract", "--method", "uncond", "--num-images", "2", *STEPS, "--pipeline", pipeline, *extra]
        return run([*argv, "--output", tmp_path / output], capsys)

    empty = tmp_path / "not-a-pipeline"
    empty.mkdir()
    assert "model_index.json" in extract(empty)[2]
    assert "no-such-local-model" in extract("no-such-local-model")[2]

    pickled = tmp_path / "pickled"
    SIDEPipeline.from_pretrained(pipe_dir).save_pretrained(pickled, safe_serialization=False)
    assert "--allow-pickle" in extract(pickled)[2]
    assert extract(pickled, "--allow-pickle", output="from-pickle")[0] == 0
    assert extract(pipe_dir, "--allow-pickle", output="from-safetensors")[0] == 0

    truncated = tmp_path / "truncated"
    SIDEPipeline.from_pretrained(pipe_dir).save_pretrained(truncated)
    weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    err = extract(truncated)[2]
    assert "corrupt" in err and "--allow-pickle" not in err

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert "is a file" in extract(pipe_dir, output="a-file")[2]
    synthetic = write_generation_dir(tmp_path / "synthetic", smooth_images(6), pipeline=str(pipe_dir))
    assert run(["label", "--synthetic", synthetic, "--output", tmp_path / "l", "--device", "bogus"], capsys)[0] == 2
    assert run(["push", synthetic, "--repo", "me/x"], capsys)[0] == 2  # offline: HF_HUB_OFFLINE=1


def test_label_column_that_holds_images_is_refused(tmp_path, capsys):
    target, labels = save_ddpm(tmp_path / "target"), write_labels(tmp_path / "labels")
    argv = ["train-classifier", "--pretrained_model_name_or_path", target, "--train_data_dir", labels, *TRAIN_FAST]
    code, _, err = run([*argv, "--output_dir", tmp_path / "out", "--label_column", "image"], capsys)
    assert code == 2 and "--label_column" in err


def test_bad_values_are_refused_before_any_output_or_training(tmp_path, pipe_dir, capsys):
    output = tmp_path / "synthetic"
    synthesize = ["synthesize", "--pipeline", pipe_dir, "--num-samples", "4", *STEPS, "--output", output]
    assert run([*synthesize, "--seed", "-1"], capsys)[0] == 2 and not output.exists()
    assert run([*synthesize, "--seed", "0"], capsys)[0] == 0

    demo = tmp_path / "demo"
    for bad in (["--num-images", "0"], ["--guidance-scale", "-1"], ["--reference", tmp_path / "no-such-folder"]):
        assert run(["demo", "--quick", "--output", demo, *bad], capsys)[0] == 2
        assert not (demo / "synthetic").exists()

    sweep = ["sweep", "--pipeline", pipe_dir, "--num-images", "2", *STEPS, "--output", tmp_path / "sweep"]
    assert run([*sweep, "--guidance-scales", "0,-1"], capsys)[0] == 2
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("argv", [["--help"], ["extract", "--help"], ["train-classifier", "--help"], ["extract", "--num-images", "0"],
                                  ["train-classifier", "--learning_rate", "nan"], ["label"]])
def test_help_and_argument_errors_import_neither_torch_nor_diffusers(argv):
    code = (
        "import sys\nfrom diffusers_side.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exit:\n    status = exit.code\n"
        "heavy = [m for m in ('torch', 'diffusers', 'datasets', 'transformers') if m in sys.modules]\n"
        "print('STATUS', status, 'HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    status = 0 if argv[-1] == "--help" else 2
    assert f"STATUS {status} HEAVY []" in result.stdout, result.stdout + result.stderr
    if status == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
