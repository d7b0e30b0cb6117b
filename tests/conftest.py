"""Shared fixtures: tiny models so the whole suite runs in minutes on two CPU cores."""

import os
import socket
import subprocess
import sys

# No test may reach the network: Hub code paths are exercised through a populated cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset
from diffusers import UNet2DModel

from diffusers_side.generation.engine import RECORD_FEATURES


def make_tiny_unet(in_channels: int = 1, sample_size: int = 16, seed: int = 0) -> UNet2DModel:
    """A randomly initialised two-level UNet2DModel (about 20k parameters)."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


@pytest.fixture
def tiny_unet() -> UNet2DModel:
    return make_tiny_unet()


@pytest.fixture
def single_thread():
    """Run torch single-threaded, like the child processes (`subprocess_env`): bit-identical comparisons
    between an in-process run and a child process need the same reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def subprocess_env() -> dict:
    """The environment for child processes: one thread each, no GPU."""
    return dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def launch_two_processes(*command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``command`` (a script path, or ``-m module``, plus its arguments) under ``accelerate launch`` with 2 processes.

    ``accelerate launch --cpu --num_processes 2`` starts only one process in accelerate 1.x (unless mpirun
    is set up); ``--multi_gpu`` goes through torchrun, and our entry points pick CPU + gloo themselves
    when no GPU is visible.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    return subprocess.run([*launch, *command], env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def write_generation_dir(path: Path, images: list, method: str = "synthetic", guidance_scale: float = 0.0,
                         pipeline: str | None = None, first_seed: int = 100) -> Path:
    """A folder laid out as `side synthesize` / `side extract` write it: generation.json + one parquet shard.

    `images` are PIL images or uint8 arrays (H, W) / (H, W, 3); guided methods get targets 0, 1, 2, 0, ...
    """
    images = [PIL.Image.fromarray(np.asarray(i)) if isinstance(i, np.ndarray) else i for i in images]
    count, guided = len(images), guidance_scale > 0
    (path / "shards").mkdir(parents=True)
    Dataset.from_dict(
        {
            "image": images,
            "index": list(range(count)),
            "seed": list(range(first_seed, first_seed + count)),
            "method": [method] * count,
            "target": [i % 3 if guided else -1 for i in range(count)],
            "guidance_scale": [guidance_scale] * count,
        },
        features=RECORD_FEATURES,
    ).to_parquet(str(path / "shards" / "shard-00000.parquet"))
    settings = {"method": method, "guidance_scale": guidance_scale, "num_images": count, "batch_size": count, "seed": first_seed,
                "num_inference_steps": 10, **({"pipeline": pipeline} if pipeline else {})}
    (path / "generation.json").write_text(json.dumps(settings))
    return path


def make_tiny_autoencoder(kind: str = "vq", seed: int = 0, channels: int = 3):
    """A randomly initialised two-level `VQModel` (``"vq"``) or `AutoencoderKL` (``"kl"``): 3x16x16 (or
    ``channels``x16x16) <-> 2x8x8."""
    from diffusers import AutoencoderKL, VQModel

    torch.manual_seed(seed)
    shared = dict(in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                  latent_channels=2, norm_num_groups=4, sample_size=16)
    return (VQModel(num_vq_embeddings=16, **shared) if kind == "vq" else AutoencoderKL(**shared)).eval()


def save_tiny_ldm(path: Path, kind: str = "vq") -> Path:
    """An `LDMPipeline` folder as diffusers saves it: ``vqvae`` (a VQModel or AutoencoderKL), ``unet`` over its
    2x8x8 latents and a DDIM scheduler with 100 training steps."""
    from diffusers import DDIMScheduler, LDMPipeline

    unet = make_tiny_unet(in_channels=2, sample_size=8, seed=1)
    LDMPipeline(vqvae=make_tiny_autoencoder(kind), unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100)).save_pretrained(path)
    return path
