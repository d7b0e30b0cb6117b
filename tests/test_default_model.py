"""The embedded models' export: what `python -m diffusers_side.storage.embedded RUN_DIR [--name NAME]` writes into the package."""

import json
import subprocess
import sys

import PIL.Image
import pytest
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler
from huggingface_hub import ModelCard, ModelCardData

from conftest import make_tiny_unet, subprocess_env
from diffusers_side.storage.cards import render_card, write_card
from diffusers_side.storage.embedded import (
    DEFAULT_PIPELINE_DIR,
    EMBEDDED_MODELS,
    LOSS_CURVE_FILE,
    MODEL_NAME,
    draw_subset_indices,
    embedded_model_card,
    export_embedded_model,
    load_training_subset,
)

COMMAND = "python training/train_dpm.py --dataset_name {dataset} --output_dir outputs/final --max_train_steps 3"


def write_training_run(path, dataset="default", num_images=100):
    """A folder as `training/train_dpm.py --dataset_name DATASET --output_dir outputs/final` leaves it (tiny UNet)."""
    DDPMPipeline(make_tiny_unet(), DDPMScheduler(num_train_timesteps=50)).save_pretrained(path)
    PIL.Image.new("L", (32, 16)).save(path / "samples.png")
    history = [{"step": 2, "lr": 1e-4, "loss": 0.9, "steps": 2}, {"step": 3, "lr": 1e-4, "loss": 0.5, "steps": 1}]
    (path / "train_log.json").write_text(json.dumps({"global_step": 3, "final_loss": 0.5, "history": history}))
    (path / "run_config.json").write_text(json.dumps({"script": "train_dpm", "dataset_name": dataset}))
    card_data = ModelCardData(library_name="diffusers", pipeline_tag="unconditional-image-generation",
                              tags=["diffusers", "ddpm", "diffusers-side"], model_name="final")
    fields = {"model_name": "final", "repo_id": "outputs/final", "sample_grid": "samples.png", "dataset": dataset,
              "num_images": num_images, "channels": 1, "resolution": 16, "global_step": 3, "final_loss": 0.5,
              "final_loss_steps": 3, "command": COMMAND.format(dataset=dataset)}
    write_card(render_card("train_dpm", card_data, **fields), path)
    return path


def test_export_writes_a_card_that_describes_the_embedded_default(tmp_path):
    run = write_training_run(tmp_path / "final")
    exported = tmp_path / "embedded"
    result = subprocess.run([sys.executable, "-m", "diffusers_side.storage.embedded", str(run), str(exported)],
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    card = ModelCard.load(exported / "README.md")
    assert card.data.model_name == MODEL_NAME
    assert "# final" not in card.text and 'from_pretrained("outputs/final")' not in card.text
    assert 'DDIMPipeline.from_pretrained(EMBEDDED_MODELS["default"].folder)' in card.text and "--pipeline default" in card.text
    assert COMMAND.format(dataset="default") in card.text and "| Data set | `default` (100 images, 1 channel) |" in card.text
    assert "![training loss](loss_curve.png)" in card.text
    with PIL.Image.open(exported / LOSS_CURVE_FILE) as curve:
        assert curve.format == "PNG"
    assert isinstance(DDIMScheduler.from_pretrained(exported, subfolder="scheduler"), DDIMScheduler)
    assert json.loads((exported / "training_subset.json").read_text())["indices"] == draw_subset_indices()


def test_export_of_a_run_on_a_copy_of_the_subset_names_the_embedded_data(tmp_path):
    """A run that read a `save_to_disk` copy of digits-rare's subset: checked, then the card's command names `digits-rare`."""
    copy = tmp_path / "rare-data"
    load_training_subset("digits-rare").save_to_disk(str(copy))
    run = write_training_run(tmp_path / "final", dataset=str(copy), num_images=200)
    exported = export_embedded_model(run, tmp_path / "embedded", name="digits-rare", training_data=copy)
    card = ModelCard.load(exported / "README.md")
    assert card.data.model_name == "diffusers-side-digits-rare" and "--pipeline digits-rare" in card.text
    assert COMMAND.format(dataset="digits-rare") in card.text and "| Data set | `digits-rare` (200 images, 1 channel) |" in card.text
    assert f"The run read `{copy}`, a `save_to_disk` copy of this subset" in card.text and str(copy) not in card.text.split(
        "Exact command:")[1]
    recorded = json.loads((exported / "training_subset.json").read_text())
    assert (recorded["size"], recorded["seed"], recorded["indices"]) == (200, 1, draw_subset_indices(200, 1))


def test_export_refuses_training_data_that_is_not_the_subset_before_writing(tmp_path):
    other = tmp_path / "default-data"
    load_training_subset("default").save_to_disk(str(other))
    run = write_training_run(tmp_path / "final", dataset=str(other))
    with pytest.raises(ValueError, match=r"holds 100 images, 'digits-rare' 200; it is not a copy of 'digits-rare'"):
        export_embedded_model(run, tmp_path / "embedded", name="digits-rare", training_data=other)
    with pytest.raises(ValueError, match=r"'digits' is not an embedded model; choose one of 'default', 'digits-rare'"):
        export_embedded_model(run, tmp_path / "embedded", name="digits")
    assert not (tmp_path / "embedded").exists()


@pytest.mark.parametrize("name", list(EMBEDDED_MODELS))
def test_shipped_card_is_the_one_export_writes(name):
    """Each card in the package is a fixed point of the export's card step: re-exporting cannot regress it."""
    model = EMBEDDED_MODELS[name]
    shipped = model.folder / "README.md"
    assert str(embedded_model_card(shipped, name)) == shipped.read_text()
    assert ModelCard.load(shipped).data.model_name == model.model_name
    assert f"--dataset_name {name} " in shipped.read_text() and "![training loss](loss_curve.png)" in shipped.read_text()
    with PIL.Image.open(model.folder / LOSS_CURVE_FILE) as curve:
        assert curve.format == "PNG"
    assert EMBEDDED_MODELS["default"].folder == DEFAULT_PIPELINE_DIR and EMBEDDED_MODELS["default"].model_name == MODEL_NAME
