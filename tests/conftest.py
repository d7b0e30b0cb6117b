"""Shared fixtures: tiny models so the whole suite runs in minutes on two CPU cores."""

import os

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
