"""training/export_checkpoint.py: a train_dpm checkpoint becomes a pipeline with the run's schedule and a chosen sampler."""

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Features, Image
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from safetensors.torch import load_file

from diffusers_side.pipelines.loading import load_pipeline
from diffusers_side.storage.embedded import EMA_CONFIG_KEYS
from diffusers_side.training.dpm import dpm_training_args, train_dpm
from diffusers_side.training.export import export_dpm_checkpoint

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Two steps of a tiny RGB run with a cosine schedule of 50 steps, checkpointed at its last step."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), mode="RGB") for _ in range(6)]
    Dataset.from_dict({"image": images}, features=Features({"image": Image()})).save_to_disk(str(root / "data"))
    args = dpm_training_args(
        train_data_dir=str(root / "data"), output_dir=str(root / "run"), block_out_channels=[8, 16], ddpm_num_steps=50,
        ddpm_beta_schedule="squaredcos_cap_v2", train_batch_size=3, max_train_steps=2, checkpointing_steps=2,
        eval_batch_size=1, ddpm_num_inference_steps=2,
    )
    return train_dpm(args)


def test_export_equals_the_final_pipeline_with_the_chosen_sampler(run, tmp_path):
    output = export_dpm_checkpoint(run / "checkpoint-2", tmp_path / "model", scheduler="dpm-solver")
    exported, final = load_file(str(output / UNET_WEIGHTS)), load_file(str(run / UNET_WEIGHTS))
    assert exported.keys() == final.keys()
    for name in final:  # the checkpoint's EMA weights are what train_dpm saves at the end
        torch.testing.assert_close(exported[name], final[name], rtol=0, atol=0)
    pipe = load_pipeline(output)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    training = DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod, training.alphas_cumprod, rtol=0, atol=0)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert not set(EMA_CONFIG_KEYS) & set(json.loads((output / "unet" / "config.json").read_text()))
    record = json.loads((output / "export.json").read_text())
    assert (record["global_step"], record["scheduler_class"]) == (2, "DPMSolverMultistepScheduler")


def test_refuses_what_is_not_an_ema_checkpoint_of_train_dpm(run, tmp_path):
    with pytest.raises(ValueError, match="--scheduler 'heun' is not supported; choose one of"):
        export_dpm_checkpoint(run / "checkpoint-2", tmp_path / "a", scheduler="heun")
    with pytest.raises(FileNotFoundError, match="is not a training checkpoint .no training_state.json.; pass a checkpoint-N"):
        export_dpm_checkpoint(run, tmp_path / "b")
    no_ema = shutil.copytree(run / "checkpoint-2", tmp_path / "checkpoint-2")
    shutil.rmtree(no_ema / "ema")
    with pytest.raises(ValueError, match="holds no EMA weights"):
        export_dpm_checkpoint(no_ema, tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")
