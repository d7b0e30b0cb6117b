"""The classifier's speed cuts and sizes: BatchNorm folding in frozen eval forwards, new layouts, the ``auto`` size rule."""

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler
from test_train_classifier import make_labelled_data
from torch import nn

from conftest import make_tiny_unet
from diffusers_side import SIDEPipeline, TimeDependentClassifier
from diffusers_side.models.classifier import RESNET_LAYOUTS
from diffusers_side.models.classifier_size import (
    CLASSIFIER_SIZES,
    PRESET_SIZES,
    ClassifierSize,
    auto_classifier_size,
    resolve_classifier_size,
)
from diffusers_side.training.arguments import CLASSIFIER_LAYERS
from diffusers_side.training.classifier import classifier_training_args, train_classifier


def trained_statistics_classifier(layers: str = "resnet18", seed: int = 0) -> TimeDependentClassifier:
    """A small classifier whose BatchNorms hold non-trivial running statistics and affine weights, frozen in eval mode."""
    torch.manual_seed(seed)
    classifier = TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=4, layers=layers, base_channels=4)
    with torch.no_grad():
        for module in classifier.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        classifier.train()
        for _ in range(3):
            classifier(torch.randn(16, 1, 16, 16) * 2, torch.randint(0, 1000, (16,)))
    return classifier.eval().requires_grad_(False)


def input_gradient(classifier: TimeDependentClassifier, sample: torch.Tensor, timesteps: torch.Tensor) -> tuple:
    noisy = sample.clone().requires_grad_(True)
    logits = classifier(noisy, timesteps)
    (gradient,) = torch.autograd.grad(logits.log_softmax(-1)[:, 0].sum(), noisy)
    return logits.detach(), gradient


@pytest.mark.parametrize("layers", sorted(RESNET_LAYOUTS))
def test_folded_batch_norm_gives_the_layer_by_layer_logits_and_input_gradient(layers):
    classifier = trained_statistics_classifier(layers)
    sample, timesteps = torch.randn(6, 1, 16, 16), torch.tensor([0, 10, 200, 500, 800, 999])
    reference = input_gradient(classifier.set_fused_inference(False), sample, timesteps)
    folded = input_gradient(classifier.set_fused_inference(True), sample, timesteps)
    for expected, got in zip(reference, folded):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_frozen_eval_forward_skips_the_batch_norm_layers(monkeypatch):
    classifier = trained_statistics_classifier()

    def refuse(self, hidden):
        raise AssertionError("BatchNorm2d.forward ran")

    monkeypatch.setattr(nn.BatchNorm2d, "forward", refuse)
    with torch.no_grad():
        assert classifier(torch.randn(2, 1, 16, 16), torch.tensor([3, 4])).shape == (2, 4)
    input_gradient(classifier, torch.randn(2, 1, 16, 16), torch.tensor([3, 4]))  # guidance: grad to x_t only
    with pytest.raises(AssertionError, match="BatchNorm2d.forward ran"):
        classifier.set_fused_inference(False)(torch.randn(2, 1, 16, 16), torch.tensor([3, 4]))


def test_weights_still_get_gradients_in_eval_mode_and_training_uses_batch_statistics():
    classifier = trained_statistics_classifier().requires_grad_(True)
    classifier(torch.randn(4, 1, 16, 16), torch.tensor([1, 2, 3, 4])).sum().backward()
    assert classifier.blocks[0].norm1.weight.grad is not None and classifier.conv_in.weight.grad.abs().sum() > 0
    # training mode normalises with the batch's statistics and updates the running ones, as before
    classifier.train()
    before = classifier.norm_in.running_mean.clone()
    with torch.no_grad():
        classifier(torch.randn(4, 1, 16, 16) + 3, torch.tensor([1, 2, 3, 4]))
    assert not torch.equal(before, classifier.norm_in.running_mean)


def test_guided_sampling_with_folding_matches_the_layer_by_layer_classifier_and_scale_zero_stays_plain():
    classifier = trained_statistics_classifier()
    unet, scheduler = make_tiny_unet(), DDIMScheduler(num_train_timesteps=100)
    pipe = SIDEPipeline(unet, scheduler, classifier)

    def sample(scale):
        return pipe(batch_size=3, target=[0, 1, 2], guidance_scale=scale, num_inference_steps=8,
                    generator=torch.Generator().manual_seed(0), output_type="pt").images

    folded = sample(5.0)
    classifier.set_fused_inference(False)
    reference = sample(5.0)
    torch.testing.assert_close(folded, reference, rtol=0, atol=1e-4)
    plain = DDPMPipeline(unet, DDPMScheduler(num_train_timesteps=100))
    plain_images = plain(batch_size=3, num_inference_steps=8, generator=torch.Generator().manual_seed(0), output_type="np").images
    side = SIDEPipeline(unet, DDPMScheduler(num_train_timesteps=100), classifier.set_fused_inference(True))
    side_images = side(batch_size=3, guidance_scale=0.0, num_inference_steps=8, generator=torch.Generator().manual_seed(0),
                       output_type="np").images
    assert (plain_images == side_images).all()


def test_new_layouts_have_their_stages():
    for layers, stages in (("resnet8", 3), ("resnet10", 4)):
        classifier = TimeDependentClassifier(in_channels=3, sample_size=8, num_classes=2, layers=layers, base_channels=4)
        assert len(classifier.blocks) == stages and classifier.head.in_features == 4 * 2 ** (stages - 1)
    assert set(CLASSIFIER_LAYERS) == set(RESNET_LAYOUTS)


@pytest.mark.parametrize(
    ("image_size", "num_images", "expected"),
    [
        (8, 500, ("resnet18", 16)),
        (16, 9_000, ("resnet18", 16)),
        (16, 19_999, ("resnet18", 16)),
        (16, 20_000, ("resnet18", 32)),
        (17, 1_000, ("resnet18", 16)),
        (32, 45_000, ("resnet18", 32)),
        (64, 200_000, ("resnet18", 64)),
    ],
)
def test_auto_rule(image_size, num_images, expected):
    assert auto_classifier_size(image_size, num_images) == ClassifierSize(*expected)


def test_size_names_and_bad_values():
    assert resolve_classifier_size("paper", 16, 10) == ClassifierSize("resnet34", 64) == PRESET_SIZES["paper"]
    assert set(CLASSIFIER_SIZES) == {"auto", *PRESET_SIZES}
    with pytest.raises(ValueError, match="classifier size 'huge' is not one of"):
        resolve_classifier_size("huge", 16, 10)
    with pytest.raises(ValueError, match="image_size=4"):
        auto_classifier_size(4, 10)
    with pytest.raises(ValueError, match="num_images=0"):
        auto_classifier_size(16, 0)


def test_training_with_classifier_size_auto_builds_the_rule_s_network(tmp_path):
    target = tmp_path / "ddpm"
    DDPMPipeline(unet=make_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(target)
    labelled = make_labelled_data(tmp_path / "labels", num_images=24)
    flags = dict(pretrained_model_name_or_path=str(target), train_data_dir=str(labelled), max_train_steps=2, train_batch_size=8)
    with pytest.raises(ValueError, match="--classifier_size auto sets the layout and width itself; drop --classifier_layers resnet34"):
        train_classifier(classifier_training_args(output_dir=str(tmp_path / "bad"), classifier_size="auto", classifier_layers="resnet34", **flags))
    assert not (tmp_path / "bad").exists()
    output = train_classifier(classifier_training_args(output_dir=str(tmp_path / "auto"), classifier_size="auto", **flags))
    config = json.loads((output / "classifier" / "config.json").read_text())
    assert (config["layers"], config["base_channels"]) == ("resnet18", 16)


def test_demo_trains_its_classifiers_at_the_named_size(monkeypatch, tmp_path):
    from diffusers_side.workflows import demo

    seen = []
    monkeypatch.setattr(demo, "train_classifier", seen.append)
    demo.Demo(tmp_path, demo.resolve_config("paper", classifier_size="auto")).train_classifier("classifier-side", False)
    demo.Demo(tmp_path, demo.resolve_config("paper")).train_classifier("classifier-side", False)
    demo.Demo(tmp_path, demo.resolve_config("paper", classifier_size=None)).train_classifier("classifier-side", False)
    assert seen[0].classifier_size == "auto" and seen[0].base_channels == 32  # the parser's default, not the preset's 64
    assert seen[1].classifier_size == "auto"  # the paper preset's default: the size rule, not the ResNet-34
    assert (seen[2].classifier_size, seen[2].classifier_layers, seen[2].base_channels) == (None, "resnet34", 64)
    with pytest.raises(ValueError, match="classifier_size 'huge' is not one of"):
        demo.Demo(tmp_path / "x", demo.resolve_config("paper", classifier_size="huge")).check()


def test_preloaded_batches_are_the_streamed_batches(tmp_path):
    from diffusers_side.training.common import image_dataloader, load_training_images
    from diffusers_side.training.preload import PreloadedImages, preloaded_dataloader

    data = load_training_images(str(make_labelled_data(tmp_path / "labels", num_images=20)))
    loaders = [image_dataloader(data, 6, False, extra_columns=["label"]), preloaded_dataloader(data, 6, False, extra_columns=["label"])]
    assert isinstance(loaders[1].dataset, PreloadedImages)
    epochs = []
    for loader in loaders:
        torch.manual_seed(3)  # the sampler's shuffle draws from the global generator here (accelerate seeds it in training)
        epochs.append(list(loader))
    assert len(epochs[0]) == len(epochs[1]) == 4
    for streamed, preloaded in zip(*epochs):
        assert torch.equal(streamed["pixel_values"], preloaded["pixel_values"]) and torch.equal(streamed["label"], preloaded["label"])
    too_big = preloaded_dataloader(data, 6, False, extra_columns=["label"], max_bytes=100)
    assert not isinstance(too_big.dataset, PreloadedImages)


def test_training_on_preloaded_images_gives_the_weights_of_streamed_images(monkeypatch, tmp_path):
    from safetensors.torch import load_file

    from diffusers_side.training import classifier as classifier_training
    from diffusers_side.training.common import image_dataloader

    target = tmp_path / "ddpm"
    DDPMPipeline(unet=make_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(target)
    labelled = make_labelled_data(tmp_path / "labels", num_images=24)
    flags = dict(pretrained_model_name_or_path=str(target), train_data_dir=str(labelled), max_train_steps=4,
                 train_batch_size=8, base_channels=4)
    preloaded = train_classifier(classifier_training_args(output_dir=str(tmp_path / "preloaded"), **flags))
    monkeypatch.setattr(classifier_training, "preloaded_dataloader", image_dataloader)
    streamed = train_classifier(classifier_training_args(output_dir=str(tmp_path / "streamed"), **flags))
    weights = [load_file(str(run / "classifier" / "diffusion_pytorch_model.safetensors")) for run in (preloaded, streamed)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
