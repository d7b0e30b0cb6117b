"""An `LDMPipeline`-style latent target (a tiny `VQModel` + `UNet2DModel`, built here) audited end to end by `side demo`.

The UNet models 2x8x8 latents of 1x16x16 images: synthesis and extraction sample latents (guided on latents) and
decode them, the labels embed the latents with the target's own UNet, both classifiers train on latents, and the
evaluation compares decoded images with the reference images in pixel space.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, LDMPipeline
from test_sampling_core import LATENT_CHANNELS

from conftest import make_tiny_autoencoder, make_tiny_unet
from diffusers_side import SIDEPipeline
from diffusers_side.cli import main as side
from diffusers_side.guidance.exemplar import ExemplarPosterior
from diffusers_side.storage.data import load_image_dataset
from diffusers_side.storage.embedded import load_training_subset

STAGES = ("synthesize", "label", "train classifier-side", "train classifier-cond", "extract side", "extract uncond",
          "extract cond", "extract side-exemplar", "evaluate")


@pytest.fixture(scope="module")
def ldm_target(tmp_path_factory):
    """A tiny LDMPipeline saved by diffusers (vqvae + unet + scheduler), and 24 reference images it is audited against."""
    unet = make_tiny_unet(in_channels=LATENT_CHANNELS, sample_size=8)
    root = tmp_path_factory.mktemp("ldm")
    LDMPipeline(vqvae=make_tiny_autoencoder("vq", channels=1), unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(root / "ldm")
    reference = root / "reference"
    reference.mkdir()
    for index, image in enumerate(load_training_subset()[:24]["image"]):
        image.save(reference / f"{index:03d}.png")
    return root / "ldm", reference


def test_ldm_target_passes_the_quick_demo_in_latent_space(ldm_target, tmp_path, capsys):
    pipeline, reference = ldm_target
    output = tmp_path / "demo"
    assert side(["demo", "--quick", "--pipeline", str(pipeline), "--reference", str(reference), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert all(f"[side] {stage} done in" in out for stage in STAGES)

    for name in ("classifier-side", "classifier-cond"):  # trained on the UNet's latents, not on pixels
        config = json.loads((output / name / "classifier" / "config.json").read_text())
        assert (config["in_channels"], config["sample_size"]) == (LATENT_CHANNELS, 8)
    for folder in ("synthetic", "extract-side", "extract-uncond", "extract-cond", "extract-side-exemplar"):
        images = load_image_dataset(str(output / folder))["image"]
        assert {image.size for image in images} == {(16, 16)} and {image.mode for image in images} == {"L"}
    report = json.loads((output / "report.json").read_text())
    assert set(report["methods"]) == {"side", "uncond", "cond", "side-exemplar"}
    for method in report["methods"].values():  # every candidate scored against the 24 pixel-space references
        assert method["num_generations"] == 12 and np.isfinite(list(method["percentiles"].values())).all()

    # The unguided candidates are the target's own samples: image 0 regenerated alone by LDMPipeline's sampler
    # (its DDPM scheduler, the demo's, with the image's generator: LDMPipeline itself passes none to the step).
    pipe = SIDEPipeline.from_pretrained(pipeline)
    settings = json.loads((output / "extract-uncond" / "generation.json").read_text())
    first = load_image_dataset(str(output / "extract-uncond")).sort("index")[0]
    generator = torch.Generator().manual_seed(first["seed"])
    again = pipe(batch_size=1, generator=generator, num_inference_steps=settings["num_inference_steps"]).images[0]
    assert np.array_equal(np.asarray(first["image"]), np.asarray(again))


def test_exemplars_of_a_latent_target_are_its_latents():
    unet = make_tiny_unet(in_channels=LATENT_CHANNELS, sample_size=8)
    pipe = SIDEPipeline(unet, DDPMScheduler(num_train_timesteps=100), vqvae=make_tiny_autoencoder("kl", channels=1))
    pixels = ExemplarPosterior(torch.rand(6, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 2] * 2), num_classes=3)
    with pytest.raises(ValueError, match=r"exemplars.encoded\(pipe.codec\)"):
        pipe(batch_size=1, exemplars=pixels, num_inference_steps=2)
    latents = pixels.encoded(pipe.codec)
    assert latents.image_shape == (LATENT_CHANNELS, 8, 8) and torch.equal(latents.labels, pixels.labels)
    with torch.no_grad():
        expected = pipe.vqvae.encode(pixels.images.view(-1, 1, 16, 16).float()).latent_dist.mode() * pipe.vqvae.config.scaling_factor
    torch.testing.assert_close(latents.images.view(-1, LATENT_CHANNELS, 8, 8).float(), expected)
    out = pipe(batch_size=2, exemplars=latents, target=[0, 2], guidance_scale=5.0, num_inference_steps=2, output_type="pt")
    assert out.images.shape == (2, 1, 16, 16) and out.targets.tolist() == [0, 2]
