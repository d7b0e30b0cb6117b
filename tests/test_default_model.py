"""The embedded default's export: what `python -m diffusers_side.default_model RUN_DIR` writes into the package."""

import json
import subprocess
import sys

import PIL.Image
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler
from huggingface_hub import ModelCard, ModelCardData

from conftest import make_tiny_unet, subprocess_env
from diffusers_side.cards import render_card, write_card
from diffusers_side.default_model import DEFAULT_PIPELINE_DIR, MODEL_NAME, draw_subset_indices, embedded_model_card

COMMAND = "python training/train_dpm.py --dataset_name default --output_dir outputs/final --max_train_steps 3"


def write_training_run(path):
    """A folder as `training/train_dpm.py --output_dir outputs/final` leaves it (tiny UNet, card named `final`)."""
    DDPMPipeline(make_tiny_unet(), DDPMScheduler(num_train_timesteps=50)).save_pretrained(path)
    PIL.Image.new("L", (32, 16)).save(path / "samples.png")
    (path / "train_log.json").write_text(json.dumps({"global_step": 3, "final_loss": 0.5}))
    card_data = ModelCardData(library_name="diffusers", pipeline_tag="unconditional-image-generation",
                              tags=["diffusers", "ddpm", "diffusers-side"], model_name="final")
    fields = {"model_name": "final", "repo_id": "outputs/final", "sample_grid": "samples.png", "dataset": "default",
              "num_images": 100, "channels": 1, "resolution": 16, "global_step": 3, "final_loss": 0.5,
              "final_loss_steps": 3, "command": COMMAND}
    write_card(render_card("train_dpm", card_data, **fields), path)
    return path


def test_export_writes_a_card_that_describes_the_embedded_default(tmp_path):
    run = write_training_run(tmp_path / "final")
    exported = tmp_path / "embedded"
    result = subprocess.run([sys.executable, "-m", "diffusers_side.default_model", str(run), str(exported)],
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    card = ModelCard.load(exported / "README.md")
    assert card.data.model_name == MODEL_NAME
    assert "# final" not in card.text and 'from_pretrained("outputs/final")' not in card.text
    assert "DDIMPipeline.from_pretrained(DEFAULT_PIPELINE_DIR)" in card.text and "--pipeline default" in card.text
    assert COMMAND in card.text and "| Data set | `default` (100 images, 1 channel) |" in card.text
    assert isinstance(DDIMScheduler.from_pretrained(exported, subfolder="scheduler"), DDIMScheduler)
    assert json.loads((exported / "training_subset.json").read_text())["indices"] == draw_subset_indices()


def test_shipped_card_is_the_one_export_writes():
    """The card in the package is a fixed point of the export's card step: re-exporting cannot regress it."""
    shipped = DEFAULT_PIPELINE_DIR / "README.md"
    assert str(embedded_model_card(shipped)) == shipped.read_text()
    assert ModelCard.load(shipped).data.model_name == MODEL_NAME
