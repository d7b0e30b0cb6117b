"""Shared fixtures: tiny models so the whole suite runs in minutes on two CPU cores."""

import os
import socket
import subprocess
import sys

# No test may reach the network: Hub code paths are exercised through a populated cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from diffusers import UNet2DModel


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
