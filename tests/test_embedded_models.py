"""Every embedded model (`default`, `digits-rare`) is addressed by its name like `default` in every command."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_side.cli import main as side
from diffusers_side.pipelines.loading import load_pipeline
from diffusers_side.storage.data import check_image_source, load_image_dataset
from diffusers_side.storage.embedded import (
    EMBEDDED_MODELS,
    SUBSET_FILE,
    digit_images,
    draw_subset_indices,
    load_training_subset,
    subset_indices,
)
from diffusers_side.storage.sources import ModelSource
from diffusers_side.training.common import load_training_images


@pytest.mark.parametrize("name", list(EMBEDDED_MODELS))
def test_each_name_resolves_for_pipeline_and_reference(name):
    model = EMBEDDED_MODELS[name]
    source = ModelSource.parse(name, what="--pipeline")
    assert source.local_path() == model.folder and (model.folder / "model_index.json").is_file()
    assert source.kind == "embedded" and source.canonical() == name and source.hub_id is None
    check_image_source(name)
    recorded = json.loads((model.folder / SUBSET_FILE).read_text())
    drawn = draw_subset_indices(model.subset_size, model.subset_seed)
    assert (recorded["size"], recorded["seed"], recorded["indices"]) == (model.subset_size, model.subset_seed, drawn)
    reference = load_image_dataset(name)
    assert reference["source_index"] == subset_indices(name) == drawn and len(reference) == model.subset_size


def test_digits_rare_reference_is_its_200_digits_and_train_dpm_reads_them():
    images, classes = digit_images(draw_subset_indices(200, 1))
    reference = load_image_dataset("digits-rare")
    assert len(reference) == 200 and reference["digit"] == classes
    for ours, expected in zip(reference["image"], images):
        assert ours.mode == "L" and np.array_equal(np.asarray(ours), np.asarray(expected))
    data = load_training_images("digits-rare")  # what training/train_dpm.py --dataset_name digits-rare reads
    assert (len(data.dataset), data.resolution, data.channels) == (200, 16, 1)


def test_load_pipeline_digits_rare_loads_the_shipped_weights():
    pipe = load_pipeline("digits-rare")
    shipped = load_file(EMBEDDED_MODELS["digits-rare"].folder / "unet" / "diffusion_pytorch_model.safetensors")
    state = pipe.unet.state_dict()
    assert state.keys() == shipped.keys() and all(torch.equal(state[key], shipped[key]) for key in shipped)
    default = load_pipeline("default").unet.state_dict()
    assert not torch.equal(default["conv_in.weight"], state["conv_in.weight"])
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"


def test_unknown_names_fall_through_and_errors_list_every_embedded_name(tmp_path):
    source = ModelSource.parse("digits-rar", what="--pipeline")  # a Hub repo id, tried only when loaded
    assert (source.kind, source.name_or_path, source.hub_id) == ("hub", "digits-rar", "digits-rar")
    check_image_source("digits-rar")
    with pytest.raises(FileNotFoundError, match=r"'\./missing' does not exist; .*\('default', 'digits-rare'\)"):
        ModelSource.parse("./missing", what="--pipeline")
    with pytest.raises(FileNotFoundError, match=r"training set \('default', 'digits-rare'\)"):
        check_image_source(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"'digits-rar' is not an embedded model; choose one of 'default', 'digits-rare'"):
        load_training_subset("digits-rar")


def test_quick_demo_on_digits_rare(tmp_path, capsys):
    output = tmp_path / "demo"
    assert side(["demo", "--quick", "--pipeline", "digits-rare", "--reference", "digits-rare", "--output", str(output)]) == 0
    assert "[side] evaluate done in" in capsys.readouterr().out
    report = json.loads((output / "report.json").read_text())
    assert report["reference"]["num_images"] == 200
    settings = json.loads((output / "extract-uncond" / "generation.json").read_text())
    assert settings["pipeline"] == "digits-rare"
    unet_file = "unet/diffusion_pytorch_model.safetensors"  # train-classifier built its pipeline on digits-rare's UNet
    shipped = load_file(EMBEDDED_MODELS["digits-rare"].folder / unet_file)
    guided = load_file(output / "classifier-side" / unet_file)
    assert all(torch.equal(guided[key], shipped[key]) for key in shipped)
