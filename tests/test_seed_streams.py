"""Synthesis and extraction draw their image seeds from disjoint streams, and equal streams are refused."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from diffusers import DDIMScheduler

from conftest import make_tiny_unet
from diffusers_side import SIDEPipeline
from diffusers_side.cli import main as side
from diffusers_side.generation.engine import GenerationSettings, generate
from diffusers_side.generation.seeds import EXTRACTION, ROLE_BIT, SHARED, SYNTHESIS, image_seed, run_seeds
from diffusers_side.workflows.demo import QUICK, Demo


def tiny_pipeline() -> SIDEPipeline:
    return SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=50))


def settings(**overrides) -> GenerationSettings:
    values = dict(pipeline="tiny", method="uncond", num_images=6, batch_size=3, seed=0, num_inference_steps=2)
    return GenerationSettings(**{**values, **overrides})


def test_role_streams_are_disjoint_by_construction():
    synthesis = {image_seed(run, i, SYNTHESIS) for run in range(4) for i in range(300)}
    extraction = {image_seed(run, i, EXTRACTION) for run in range(4) for i in range(300)}
    assert len(synthesis) == len(extraction) == 1200
    assert not synthesis & extraction
    assert all(s >> ROLE_BIT == 0 for s in synthesis) and all(s >> ROLE_BIT == 1 for s in extraction)
    assert all(0 <= s < 2**63 for s in synthesis | extraction)
    # the legacy formula is kept for reading old folders, and is neither stream
    assert image_seed(0, 5, SHARED) not in (image_seed(0, 5, SYNTHESIS), image_seed(0, 5, EXTRACTION))
    with pytest.raises(ValueError, match="seed stream 'bogus' is not one of"):
        image_seed(0, 0, "bogus")


def test_synthesis_and_plain_extraction_at_one_seed_are_different_images(tmp_path):
    pipe = tiny_pipeline()
    synthetic = generate(pipe, tmp_path / "synthetic", settings(method="synthetic"))
    uncond = generate(pipe, tmp_path / "uncond", settings())
    assert not set(synthetic["seed"]) & set(uncond["seed"])
    assert synthetic["seed"] == run_seeds(0, 6, SYNTHESIS) and uncond["seed"] == run_seeds(0, 6, EXTRACTION)
    first = [np.asarray(image, dtype=int) for image in (synthetic[0]["image"], uncond[0]["image"])]
    assert np.abs(first[0] - first[1]).max() > 10, "the extraction must not start from the synthetic set's noise"
    assert json.loads((tmp_path / "synthetic" / "generation.json").read_text())["seed_stream"] == SYNTHESIS
    assert json.loads((tmp_path / "uncond" / "generation.json").read_text())["seed_stream"] == EXTRACTION


def test_a_stream_other_than_the_roles_is_refused():
    with pytest.raises(ValueError, match="seed_stream='synthesis' is not the stream of method='uncond'"):
        settings(seed_stream=SYNTHESIS).validate()
    with pytest.raises(ValueError, match="seed_stream='extraction' is not the stream of method='synthetic'"):
        settings(method="synthetic", seed_stream=EXTRACTION).validate()
    with pytest.raises(ValueError, match="seed_stream='shared' is the seed formula of folders written before"):
        settings(seed_stream=SHARED).validate()


def test_a_folder_written_before_the_streams_reads_as_shared_and_is_not_resumed(tmp_path):
    generate(tiny_pipeline(), tmp_path / "old", settings())
    recorded = json.loads((tmp_path / "old" / "generation.json").read_text())
    del recorded["seed_stream"]
    (tmp_path / "old" / "generation.json").write_text(json.dumps(recorded))
    assert GenerationSettings.from_dict(recorded).seed_stream == SHARED
    with pytest.raises(FileExistsError, match="written before synthesis and extraction had their own image seeds"):
        generate(tiny_pipeline(), tmp_path / "old", settings())


def write_labelled_set(path, seeds):
    images = [PIL.Image.fromarray(np.full((16, 16), 10 * i, dtype=np.uint8)) for i in range(len(seeds))]
    features = Features({"image": Image(), "label": Value("int64"), "distance": Value("float32"), "seed": Value("int64")})
    data = {"image": images, "label": [i % 2 for i in range(len(seeds))], "distance": [0.0] * len(seeds), "seed": seeds}
    Dataset.from_dict(data, features=features).save_to_disk(str(path))
    return path


def test_exemplars_labelled_from_a_run_with_the_same_seeds_are_refused(tmp_path):
    exemplar = dict(method="side-exemplar", guidance_scale=1.0, seed=3)
    # e.g. `side label` run on an extraction folder of seed 3, then used to guide an extraction of seed 3
    same = write_labelled_set(tmp_path / "same", run_seeds(3, 4, EXTRACTION))
    with pytest.raises(ValueError, match=r"4 image seed\(s\) of this run are also seeds of the exemplars"):
        settings(**exemplar, exemplars=str(same)).validate()
    synthetic = write_labelled_set(tmp_path / "synthetic", run_seeds(3, 4, SYNTHESIS))
    settings(**exemplar, exemplars=str(synthetic)).validate()  # the synthesis stream at the same run seed: accepted


def test_the_demo_synthesizes_and_extracts_from_different_streams(tmp_path):
    demo = Demo(tmp_path / "demo", QUICK)
    assert demo.generation_settings("synthetic").seed_stream == SYNTHESIS
    assert {demo.generation_settings(m).seed_stream for m in ("uncond", "side", "cond", "side-exemplar")} == {EXTRACTION}
    assert demo.generation_settings("synthetic").seed == demo.generation_settings("uncond").seed


def test_cli_synthesize_and_extract_with_the_same_seed_record_their_streams(tmp_path):
    torch.manual_seed(0)
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    common = ["--pipeline", str(tmp_path / "pipe"), "--num-inference-steps", "2", "--batch-size", "2", "--seed", "4"]
    assert side(["synthesize", "--num-samples", "2", "--output", str(tmp_path / "s"), *common]) == 0
    assert side(["extract", "--method", "uncond", "--num-images", "2", "--output", str(tmp_path / "e"), *common]) == 0
    streams = [json.loads((tmp_path / name / "generation.json").read_text())["seed_stream"] for name in ("s", "e")]
    assert streams == [SYNTHESIS, EXTRACTION]
