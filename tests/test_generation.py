"""Sharded generation behind `side synthesize` / `side extract`: seeds, resume, processes, CLI."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler

from conftest import launch_two_processes, make_tiny_unet, write_generation_dir
from diffusers_side import SIDEPipeline, TimeDependentClassifier
from diffusers_side.cli import main as side
from diffusers_side.generation import engine as generation
from diffusers_side.generation.engine import GenerationSettings, generate, image_seed, image_target
from diffusers_side.generation.seeds import EXTRACTION
from diffusers_side.storage.data import load_image_dataset


def tiny_pipeline(time_dependent=True) -> SIDEPipeline:
    torch.manual_seed(0)
    classifier = TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=3, base_channels=4, time_dependent=time_dependent)
    return SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=50), classifier.eval())


def settings(**overrides) -> GenerationSettings:
    values = dict(pipeline="tiny", method="side", num_images=10, batch_size=4, seed=7, num_inference_steps=3, guidance_scale=2.0)
    return GenerationSettings(**{**values, **overrides})


def pixels(dataset):
    return np.stack([np.asarray(image) for image in dataset["image"]])


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pipeline")
    tiny_pipeline().save_pretrained(path)
    return path


def test_records_carry_seed_target_and_method(tmp_path):
    dataset = generate(tiny_pipeline(), tmp_path / "run", settings())
    assert dataset["index"] == list(range(10))
    assert dataset["seed"] == [image_seed(7, i, EXTRACTION) for i in range(10)]
    assert dataset["target"] == [image_target(image_seed(7, i, EXTRACTION), 3) for i in range(10)]
    assert set(dataset["method"]) == {"side"} and set(dataset["guidance_scale"]) == {2.0}
    assert len(list((tmp_path / "run" / "shards").glob("*.parquet"))) == 3
    assert json.loads((tmp_path / "run" / "generation.json").read_text())["num_images"] == 10


def test_every_image_regenerates_from_its_own_seed(tmp_path):
    pipe = tiny_pipeline()
    dataset = generate(pipe, tmp_path / "run", settings(method="uncond", guidance_scale=0.0))
    seed = dataset[5]["seed"]
    alone = pipe(batch_size=1, guidance_scale=0, num_inference_steps=3, generator=[torch.Generator().manual_seed(seed)]).images[0]
    assert np.abs(np.asarray(alone, dtype=int) - np.asarray(dataset[5]["image"], dtype=int)).max() <= 1


def test_methods_share_starting_noise_at_equal_seeds(tmp_path):
    """UnCond, Cond and SIDE at the same seeds differ only by guidance: at lambda=0 SIDE equals UnCond."""
    pipe = tiny_pipeline()
    uncond = generate(pipe, tmp_path / "uncond", settings(method="uncond", guidance_scale=0.0))
    side_zero = generate(pipe, tmp_path / "side", settings(method="side", guidance_scale=0.0))
    assert np.array_equal(pixels(uncond), pixels(side_zero))


def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
    pipe = tiny_pipeline()
    full = generate(pipe, tmp_path / "full", settings())

    real_generate_shard, calls = generation.generate_shard, []

    def crash_on_third_shard(pipe, settings, shard, guide=None):
        calls.append(shard)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_generate_shard(pipe, settings, shard, guide)

    monkeypatch.setattr(generation, "generate_shard", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        generate(pipe, tmp_path / "resumed", settings())
    assert sorted(p.name for p in (tmp_path / "resumed" / "shards").iterdir()) == ["shard-00000.parquet", "shard-00001.parquet"]

    calls.clear()
    resumed = generate(pipe, tmp_path / "resumed", settings())
    assert calls == [2], "finished shards must not be generated again"
    assert resumed["seed"] == full["seed"] and resumed["target"] == full["target"]
    assert np.array_equal(pixels(resumed), pixels(full))


def test_output_dir_of_another_run_is_refused(tmp_path):
    generate(tiny_pipeline(), tmp_path / "run", settings(num_images=4))
    with pytest.raises(FileExistsError, match=r"holds a different run \(settings differ in \['num_images'\]\)"):
        generate(tiny_pipeline(), tmp_path / "run", settings(num_images=5))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty and holds no generation run"):
        generate(tiny_pipeline(), tmp_path / "other", settings())


@pytest.mark.parametrize(
    "overrides, time_dependent, message",
    [
        ({"method": "cond"}, True, "needs a time-independent classifier"),
        ({"method": "side"}, False, "needs a time-dependent classifier"),
        ({"method": "uncond", "guidance_scale": 3.0}, True, "samples without guidance but guidance_scale=3.0"),
        ({"num_images": 0}, True, "num_images=0"),
    ],
)
def test_bad_settings_are_refused_before_sampling(tmp_path, overrides, time_dependent, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_pipeline(time_dependent), tmp_path / "run", settings(**overrides))
    assert not (tmp_path / "run").exists()


def test_fewer_images_than_processes_is_refused():
    with pytest.raises(ValueError, match="num_images=1 is smaller than the 2 processes"):
        settings(num_images=1).validate(num_processes=2)


def test_cli_synthesize_and_extract(tmp_path, saved_pipeline, capsys):
    common = ["--pipeline", str(saved_pipeline), "--batch-size", "4", "--num-inference-steps", "2"]
    assert side(["synthesize", *common, "--num-samples", "6", "--output", str(tmp_path / "syn")]) == 0
    assert "synthesize (6 synthetic images) done" in capsys.readouterr().out
    assert load_image_dataset(tmp_path / "syn")["method"] == ["synthetic"] * 6

    assert side(["extract", *common, "--method", "side", "--num-images", "5", "--guidance-scale", "2", "--output", str(tmp_path / "side")]) == 0
    assert set(load_image_dataset(tmp_path / "side")["guidance_scale"]) == {2.0}

    assert side(["extract", *common, "--method", "cond", "--num-images", "5", "--output", str(tmp_path / "cond")]) == 2
    assert "needs a time-independent classifier" in capsys.readouterr().err
    assert side(["extract", *common, "--method", "uncond", "--num-images", "5", "--guidance-scale", "2", "--output", str(tmp_path / "u")]) == 2
    assert "drop --guidance-scale 2.0" in capsys.readouterr().err


def test_accelerate_two_processes_equal_one_process(tmp_path, saved_pipeline, single_thread):
    args = ["extract", "--pipeline", str(saved_pipeline), "--method", "side", "--num-images", "7", "--batch-size", "2",
            "--num-inference-steps", "2", "--guidance-scale", "1.5"]
    assert side([*args, "--output", str(tmp_path / "one")]) == 0
    result = launch_two_processes("-m", "diffusers_side", *args, "--output", str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(7 side images on 2 processes)" in result.stdout
    one, two = load_image_dataset(tmp_path / "one"), load_image_dataset(tmp_path / "two")
    assert two["seed"] == one["seed"] and two["target"] == one["target"]
    assert np.array_equal(pixels(two), pixels(one))


@pytest.mark.parametrize("guidance_space", ["xt", "x0"])
def test_cli_sweep_writes_curves_per_scale(tmp_path, saved_pipeline, capsys, guidance_space):
    reference = write_generation_dir(tmp_path / "reference", [np.full((16, 16), v, np.uint8) for v in (0, 80, 160, 240)])
    argv = ["sweep", "--pipeline", str(saved_pipeline), "--guidance-scales", "0,2", "--num-images", "4", "--batch-size", "4",
            "--num-inference-steps", "2", "--reference", str(reference), "--similarity", "l2", "--output", str(tmp_path / "sweep"),
            "--guidance-space", guidance_space]
    assert side(argv) == 0
    results = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert set(results) == {"0", "2"}
    assert {0.0, 2.0} == {r["generated"][0]["settings"]["guidance_scale"] for r in results.values()}
    assert {guidance_space} == {r["generated"][0]["settings"]["guidance_space"] for r in results.values()}
    with PIL.Image.open(tmp_path / "sweep" / "sweep.png") as plot:
        assert plot.format == "PNG"
    assert "sweep done" in capsys.readouterr().out
