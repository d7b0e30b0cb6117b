"""One target description (`AuditTarget`) for every trainer and command, including latent targets: a UNet2DModel
over the latents of a VQModel or AutoencoderKL, as diffusers' LDMPipeline saves it."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LDMPipeline
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file

from conftest import make_tiny_autoencoder, save_tiny_ldm, write_generation_dir
from diffusers_side import SIDEPipeline
from diffusers_side.evaluation.evaluate import evaluate
from diffusers_side.labels.surrogate_labels import label_synthetic
from diffusers_side.pipelines.loading import load_pipeline
from diffusers_side.pipelines.target import AuditTarget, target_kind
from diffusers_side.training.classifier import classification_loss, classifier_training_args, train_classifier
from diffusers_side.training.lora import lora_training_args, train_lora

LATENT_STEPS = 2


@pytest.fixture(scope="module")
def ldm(tmp_path_factory):
    return save_tiny_ldm(tmp_path_factory.mktemp("ldm") / "vq")


@pytest.fixture(scope="module")
def ldm_images(ldm):
    """12 RGB 16x16 images sampled by diffusers' own LDMPipeline from the tiny target."""
    images = LDMPipeline.from_pretrained(ldm)(batch_size=12, num_inference_steps=LATENT_STEPS, generator=torch.Generator().manual_seed(0)).images
    return images


@pytest.fixture(scope="module")
def labelled(ldm, ldm_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    synthetic = write_generation_dir(root / "synthetic", ldm_images, pipeline=str(ldm))
    label_synthetic(synthetic, root / "labels", num_clusters=3, cohesion=-1.0, min_cluster_size=1)
    return root / "labels"


def test_pixel_target_is_the_pipeline_the_old_loaders_built():
    target = AuditTarget.load("default")
    pipe = load_pipeline("default")
    assert (target.kind, target.sample_shape, target.image_shape, target.reference) == ("pixel", (1, 16, 16), (1, 16, 16), "default")
    assert torch.equal(target.unet.conv_in.weight, pipe.unet.conv_in.weight) and target.autoencoder is None
    assert torch.equal(target.alphas_cumprod, DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod)
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    assert target.encode(images) is images and target.decode(images) is images


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_ldm_folder_loads_as_a_latent_target(tmp_path, kind):
    folder = save_tiny_ldm(tmp_path / kind, kind)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "LDMPipeline"
    target = AuditTarget.load(folder)
    assert (target_kind(folder), target.kind, target.sample_shape, target.image_shape) == ("latent", "latent", (2, 8, 8), (3, 16, 16))
    assert target.prediction_type == "epsilon" and target.num_train_timesteps == 100
    autoencoder = make_tiny_autoencoder(kind)
    assert all(torch.equal(target.autoencoder.state_dict()[k], v) for k, v in autoencoder.state_dict().items())
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        latents = target.encode(images)
        encoded = autoencoder.encode(images)
        expected = encoded.latents if kind == "vq" else encoded.latent_dist.mode()
        assert latents.shape == (2, *target.sample_shape)
        assert torch.allclose(latents, expected * autoencoder.config.scaling_factor)
        assert target.decode(latents).shape == (2, *target.image_shape)
    pipe = SIDEPipeline.from_pretrained(folder)
    assert type(pipe.vqvae).__name__ == type(autoencoder).__name__
    assert isinstance(LDMPipeline(**pipe.components), LDMPipeline)  # the components are an LDMPipeline's
    described = AuditTarget.from_pipeline(pipe)
    assert (described.kind, described.image_shape, described.reference) == ("latent", (3, 16, 16), None)


def test_decode_is_ldm_pipelines_decode(ldm):
    """The codec's decode, after the same denoising loop, gives LDMPipeline's images exactly (scaling included)."""
    reference = LDMPipeline.from_pretrained(ldm)
    expected = reference(batch_size=2, num_inference_steps=LATENT_STEPS, generator=torch.Generator().manual_seed(1), output_type="np").images
    target = AuditTarget.load(ldm)
    scheduler = DDIMScheduler.from_config(target.scheduler.config)
    scheduler.set_timesteps(LATENT_STEPS)
    latents = randn_tensor((2, *target.sample_shape), generator=torch.Generator().manual_seed(1)) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            latents = scheduler.step(target.unet(scheduler.scale_model_input(latents, t), t).sample, t, latents).prev_sample
        images = (target.decode(latents) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(images, expected, atol=1e-6)


def test_labels_and_evaluation_of_a_latent_target_read_its_latents(ldm, ldm_images, labelled, tmp_path):
    """`side label --features unet` runs the UNet on the images' latents; `side evaluate` compares pixels."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(labelled))
    assert len(dataset) == 12 and set(dataset["label"]) <= {0, 1, 2}
    report = evaluate([labelled.parent / "synthetic"], str(labelled.parent / "synthetic"), tmp_path / "eval",
                      feature_extractor="unet", pipeline=str(ldm))
    assert report["methods"]["synthetic"]["ams"]["high"] == 1.0  # every image is its own nearest match
    gray = write_generation_dir(tmp_path / "gray", [np.zeros((16, 16), np.uint8)] * 4, pipeline=str(ldm))
    with pytest.raises(ValueError, match="The UNet takes 3-channel images but got 1 channels"):
        label_synthetic(gray, tmp_path / "gray-labels", num_clusters=2, cohesion=-1.0, min_cluster_size=1)


def test_classifier_trains_on_latents_and_the_pipeline_keeps_the_autoencoder(ldm, labelled, tmp_path):
    output = tmp_path / "classifier"
    train_classifier(classifier_training_args(
        pretrained_model_name_or_path=str(ldm), train_data_dir=str(labelled), output_dir=str(output),
        max_train_steps=3, train_batch_size=4, base_channels=8, validation_split=0.0,
    ))
    pipe = SIDEPipeline.from_pretrained(output)
    config = pipe.classifier.config
    assert (config.in_channels, config.sample_size) == (2, 8)  # it reads the UNet's 2x8x8 latents
    for name in ("vqvae", "unet"):
        saved, original = load_file(output / name / "diffusion_pytorch_model.safetensors"), load_file(ldm / name / "diffusion_pytorch_model.safetensors")
        assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in original)
    log = json.loads((output / "train_log.json").read_text())
    assert log["global_step"] == 3 and set(log["evaluation"]) == {"clean", "q0", "q1", "q2", "q3"}


def test_the_loss_encodes_before_it_noises(ldm):
    target = AuditTarget.load(ldm)
    seen = []

    def model(sample, timesteps):
        seen.append(sample.shape)
        return torch.zeros(sample.shape[0], 3, requires_grad=True)

    batch = {"pixel_values": torch.rand(4, 3, 16, 16) * 2 - 1, "label": torch.tensor([0, 1, 2, 0])}
    classification_loss(model, batch, torch.Generator().manual_seed(0), target.noise_scheduler, "label", True, False, target.codec)
    classification_loss(model, batch, torch.Generator().manual_seed(0), target.noise_scheduler, "label", True, False)
    assert seen == [(4, 2, 8, 8), (4, 3, 16, 16)]


def test_trainers_refuse_targets_they_cannot_train_before_loading_data(ldm, tmp_path):
    missing = str(tmp_path / "no-labels")
    with pytest.raises(ValueError, match=r"is a latent target; LoRA-SIDE fine-tunes pixel-space UNets"):
        train_lora(lora_training_args(pretrained_model_name_or_path=str(ldm), train_data_dir=missing, output_dir=str(tmp_path / "a")))
    text = tmp_path / "text"
    text.mkdir()
    (text / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                                                       "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}))
    with pytest.raises(ValueError, match=r"is a text target; the classifier branch guides unconditional UNets"):
        train_classifier(classifier_training_args(pretrained_model_name_or_path=str(text), train_data_dir=missing, output_dir=str(tmp_path / "b")))
    lora = tmp_path / "lora"  # issue 21, defect 5: a train-lora folder is not a target
    lora.mkdir()
    (lora / "side_lora.json").write_text(json.dumps({"pipeline_class": "SIDELoRAPipeline", "base_model": "default", "num_labels": 3, "rank": 2,
                                                    "lora_alpha": 2, "target_modules": [], "base_unet_config": {}}))
    with pytest.raises(ValueError, match=r"is a LoRA-SIDE result \(adapters on 'default'\), not a model to audit: pass its base model 'default'"):
        train_classifier(classifier_training_args(pretrained_model_name_or_path=str(lora), train_data_dir=missing, output_dir=str(tmp_path / "c")))
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_latent_targets_images_are_matched_in_pixel_space(ldm, labelled, tmp_path):
    """The labelled images must be what the autoencoder decodes to (3x16x16), not the UNet's 2x8x8 latents."""
    for flag, value, message in (("channels", 1, "--channels 1 differs from the target's channels 3"),
                                 ("resolution", 8, "--resolution 8 differs from the target's resolution 16")):
        args = classifier_training_args(pretrained_model_name_or_path=str(ldm), train_data_dir=str(labelled),
                                        output_dir=str(tmp_path / flag), **{flag: value})
        with pytest.raises(ValueError, match=message):
            train_classifier(args)
        assert not (tmp_path / flag).exists()
