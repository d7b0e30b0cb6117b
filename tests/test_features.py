"""Feature extractors: the UNet's own encoder, raw pixels, transformers backbones, TorchScript files."""

import PIL.Image
import pytest
import torch
from diffusers import DDPMScheduler

from conftest import make_tiny_unet
from diffusers_side.labels.features import (
    FeatureExtractor,
    PixelFeatureExtractor,
    TorchScriptFeatureExtractor,
    TransformersFeatureExtractor,
    UNetFeatureExtractor,
    embed_images,
    load_feature_extractor,
)
from diffusers_side.storage.data import tensor_to_pil


def smooth_images(count: int, channels: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Distinct images with structure at several scales, in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, channels, 4, 4, generator=generator)
    fine = torch.rand(count, channels, size, size, generator=generator)
    upsampled = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (0.8 * upsampled + 0.2 * fine).clamp(0, 1)


def assert_unit_rows(features: torch.Tensor) -> None:
    assert features.dtype == torch.float32
    torch.testing.assert_close(features.norm(dim=1), torch.ones(features.shape[0]))


@pytest.fixture(scope="module")
def unet_extractor() -> FeatureExtractor:
    return load_feature_extractor("unet", unet=make_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))


def test_unet_features_shape_norm_and_noise_level(unet_extractor):
    features = unet_extractor(smooth_images(5))
    # two down blocks (8 and 16 channels) and the mid block (16), each pooled to 2x2
    assert features.shape == (5, (8 + 16 + 16) * 4)
    assert_unit_rows(features)
    assert unet_extractor.name == "unet"
    assert unet_extractor.timestep == 30


def test_unet_features_are_deterministic_and_independent_of_the_batch(unet_extractor):
    images = smooth_images(6)
    together = unet_extractor(images)
    torch.testing.assert_close(unet_extractor(images), together)
    torch.testing.assert_close(unet_extractor(images[3:4]), together[3:4], atol=1e-5, rtol=1e-5)


def test_unet_features_put_near_duplicates_closer_than_other_images(unet_extractor):
    images = smooth_images(8)
    generator = torch.Generator().manual_seed(1)
    near_duplicates = (images + 0.02 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    originals, copies = unet_extractor(images), unet_extractor(near_duplicates)
    duplicate_similarity = (originals * copies).sum(dim=1)
    other_similarity = originals @ copies.T
    other_similarity.fill_diagonal_(-1)
    assert (duplicate_similarity > other_similarity.max(dim=1).values).all()


def test_unet_features_skip_the_up_blocks_and_remove_their_hooks():
    unet = make_tiny_unet()
    extractor = UNetFeatureExtractor(unet, DDPMScheduler(num_train_timesteps=100), timestep=7)
    up_calls = []
    unet.up_blocks[0].register_forward_hook(lambda *args: up_calls.append(1))
    extractor(smooth_images(2))
    assert up_calls == []
    assert all(len(block._forward_hooks) == 0 for block in extractor.hooked_blocks)
    assert extractor.timestep == 7


def test_unet_features_reject_bad_input(unet_extractor):
    with pytest.raises(ValueError, match="1-channel"):
        unet_extractor(smooth_images(2, channels=3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        unet_extractor(smooth_images(2) * 2 - 1)
    with pytest.raises(ValueError, match="unet and scheduler"):
        load_feature_extractor("unet")
    with pytest.raises(ValueError, match="outside"):
        UNetFeatureExtractor(make_tiny_unet(), DDPMScheduler(num_train_timesteps=100), timestep=100)


def test_pixel_features_keep_coarse_layout_only():
    extractor = load_feature_extractor("pixels")
    assert isinstance(extractor, PixelFeatureExtractor)
    images = smooth_images(3, channels=3)
    # swapping the two columns inside every 2x2 pooling cell keeps the 8x8 area averages
    swapped = images.view(3, 3, 16, 8, 2).flip(-1).reshape(3, 3, 16, 16)
    features, features_swapped = extractor(images), extractor(swapped)
    assert features.shape == (3, 3 * 8 * 8)
    assert_unit_rows(features)
    torch.testing.assert_close(features, features_swapped)
    assert (features[0] @ features[1]) < 0.999


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8)
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_transformers_backbone_loaded_by_path_uses_the_cls_token(tiny_vit_dir):
    extractor = load_feature_extractor(str(tiny_vit_dir))
    assert isinstance(extractor, TransformersFeatureExtractor)
    assert extractor.name == str(tiny_vit_dir)
    grayscale = smooth_images(4)
    features = extractor(grayscale)
    assert features.shape == (4, 16)
    assert_unit_rows(features)
    torch.testing.assert_close(extractor(grayscale.expand(-1, 3, -1, -1)), features)
    assert (features[0] @ features[1]) < 0.9999


def test_transformers_clip_uses_the_projected_image_features(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision = {**text, "image_size": 32, "patch_size": 8}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    features = load_feature_extractor(str(tmp_path))(smooth_images(3, channels=3))
    assert features.shape == (3, 12)
    assert_unit_rows(features)


def test_transformers_spec_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_feature_extractor(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="Could not load"):
        load_feature_extractor(str(tmp_path))


class FlattenModule(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_torchscript_file_is_resized_and_imagenet_normalised(tmp_path):
    path = tmp_path / "descriptor.torchscript.pt"
    torch.jit.save(torch.jit.script(FlattenModule()), str(path))
    extractor = load_feature_extractor(str(path), image_size=8)
    assert isinstance(extractor, TorchScriptFeatureExtractor)
    grey = torch.full((2, 1, 16, 16), 0.5)
    features = extractor(grey)
    assert features.shape == (2, 3 * 8 * 8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = ((0.5 - mean) / std).repeat_interleave(64)
    torch.testing.assert_close(features[0], expected / expected.norm())
    assert load_feature_extractor(str(path)).image_size == 288
    with pytest.raises(FileNotFoundError):
        load_feature_extractor(str(tmp_path / "missing.pt"))
    (tmp_path / "weights.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript model"):
        load_feature_extractor(str(tmp_path / "weights.pt"))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_feature_extractor(str(tmp_path / "weights.safetensors"))


class BrokenExtractor(FeatureExtractor):
    def __init__(self, mode: str):
        self.name = f"broken-{mode}"
        self.mode = mode

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        features = images.flatten(1)[:, :4].clone()
        if self.mode == "nan":
            features[-1, 0] = float("nan")
        if self.mode == "inf":
            features[0, 0] = float("inf")
        return features[:-1] if self.mode == "short" else features


def test_embed_images_batches_give_the_same_result(unet_extractor):
    images = smooth_images(7)
    batched = embed_images(unet_extractor, images, batch_size=3)
    torch.testing.assert_close(batched, embed_images(unet_extractor, images, batch_size=7), atol=1e-5, rtol=1e-5)
    from_pil = embed_images(unet_extractor, tensor_to_pil(images), batch_size=3)
    assert from_pil.shape == batched.shape
    assert torch.allclose(from_pil, batched, atol=0.02)


@pytest.mark.parametrize("mode, message", [("nan", "NaN or infinite"), ("inf", "NaN or infinite"), ("short", "3 feature vectors for a batch of 4")])
def test_embed_images_rejects_bad_extractor_output(mode, message):
    with pytest.raises(ValueError, match=message) as error:
        embed_images(BrokenExtractor(mode), smooth_images(6), batch_size=4)
    assert f"broken-{mode}" in str(error.value)


def test_embed_images_rejects_mixed_sizes_and_empty_input():
    small = tensor_to_pil(smooth_images(2, size=16))
    large = tensor_to_pil(smooth_images(2, size=8))
    with pytest.raises(ValueError, match="mixed sizes"):
        embed_images(load_feature_extractor("pixels"), small + large, batch_size=2)
    with pytest.raises(ValueError, match="mixed sizes"):
        embed_images(load_feature_extractor("pixels"), small + large, batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        embed_images(load_feature_extractor("pixels"), [])
    assert isinstance(small[0], PIL.Image.Image)
