"""The sampling core the three pipelines share (`diffusers_side.pipelines.core`), and latent targets sampled through it.

A latent target is diffusers' `LDMPipeline` layout: a `UNet2DModel` over the latents of a ``vqvae`` (a `VQModel`,
or an `AutoencoderKL`). Built here from tiny random components (conftest): 1x16x16 images, 2x8x8 latents.
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, LDMPipeline, VQModel
from test_lora_text import PROMPT, tiny_text_pipeline

from conftest import make_tiny_autoencoder, make_tiny_unet
from diffusers_side import SIDELoRAPipeline, SIDEPipeline, TimeDependentClassifier
from diffusers_side.pipelines.pipeline_side_lora_text import SIDELoRATextPipeline

LATENT_CHANNELS = 2


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def latent_pipeline(kind: str = "vq", classifier: TimeDependentClassifier | None = None, scheduler=None) -> SIDEPipeline:
    unet = make_tiny_unet(in_channels=LATENT_CHANNELS, sample_size=8)
    pipe = SIDEPipeline(unet, scheduler or DDIMScheduler(num_train_timesteps=100), classifier, vqvae=make_tiny_autoencoder(kind, channels=1))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latent_classifier(num_classes: int = 3) -> TimeDependentClassifier:
    torch.manual_seed(4)
    return TimeDependentClassifier(in_channels=LATENT_CHANNELS, sample_size=8, num_classes=num_classes, base_channels=4).eval()


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_latent_target_at_guidance_zero_is_bit_identical_to_ldm_pipeline(kind, single_thread):
    pipe = latent_pipeline(kind)
    ldm = LDMPipeline(vqvae=pipe.vqvae, unet=pipe.unet, scheduler=pipe.scheduler)
    expected = ldm(batch_size=2, generator=generator(1), num_inference_steps=4, output_type="np").images
    out = pipe(batch_size=2, generator=generator(1), num_inference_steps=4, output_type="np")
    assert out.images.shape == (2, 16, 16, 1) and out.targets is None
    assert np.array_equal(out.images, expected)
    from_pipe = SIDEPipeline.from_pipe(ldm)  # an LDMPipeline's components make a SIDEPipeline as they are
    assert from_pipe.vqvae is pipe.vqvae
    assert np.array_equal(from_pipe(batch_size=2, generator=generator(1), num_inference_steps=4, output_type="np").images, expected)
    assert set(pipe.components) == {"unet", "scheduler", "vqvae"}
    assert isinstance(LDMPipeline(**pipe.components), LDMPipeline)


def test_latent_guidance_reads_latents_and_returns_decoded_images():
    pipe = latent_pipeline(classifier=latent_classifier(), scheduler=DDPMScheduler(num_train_timesteps=100))
    seen = []
    pipe.classifier.register_forward_hook(lambda module, args, output: seen.append(tuple(args[0].shape)))
    decoded = []
    pipe.vqvae.decoder.register_forward_hook(lambda module, args, output: decoded.append(tuple(output.shape)))
    common = dict(batch_size=2, generator=generator(2), num_inference_steps=3, output_type="pt")
    guided = pipe(target=[0, 2], guidance_scale=5.0, **common)
    unguided = pipe(guidance_scale=0.0, **common)
    assert seen and set(seen) == {(2, LATENT_CHANNELS, 8, 8)}  # the classifier is trained and read on latents
    assert decoded == [(2, 1, 16, 16)] * 2  # decoded once per call, after the last step
    assert guided.images.shape == unguided.images.shape == (2, 1, 16, 16) and guided.targets.tolist() == [0, 2]
    assert not torch.allclose(guided.images, unguided.images)
    assert 0 <= guided.images.min() and guided.images.max() <= 1


def test_latent_classifier_of_pixel_shape_is_refused():
    pixel_classifier = TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=3, base_channels=4)
    with pytest.raises(ValueError, match="2x8x8"):
        latent_pipeline(classifier=pixel_classifier)


def test_latent_pipeline_round_trips_through_save_pretrained(tmp_path):
    pipe = latent_pipeline(classifier=latent_classifier())
    pipe.save_pretrained(tmp_path)
    loaded = SIDEPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.vqvae, VQModel)
    for name in ("unet", "vqvae", "classifier"):
        saved, restored = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved)
    call = dict(batch_size=1, target=1, guidance_scale=2.0, num_inference_steps=2, output_type="np")
    # same output to float rounding (reloaded tensors may be laid out differently in memory, as test_save_load_local says)
    np.testing.assert_allclose(pipe(**call, generator=generator(3)).images, loaded(**call, generator=generator(3)).images, atol=1e-5)


def build(kind: str):
    """Each of the three pipelines, untrained and tiny, with the arguments of one call."""
    if kind == "side":
        pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=100))
        call = {}
    elif kind == "lora":
        pipe = SIDELoRAPipeline.from_base(DDIMPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=100)), 3, 4)
        call = {"target": [0, 1]}
    else:
        pipe = SIDELoRATextPipeline.from_base(tiny_text_pipeline(), 3, rank=2)
        call = {"prompt": PROMPT, "target": [0, 1]}
    pipe.set_progress_bar_config(disable=True)
    return pipe, {**call, "batch_size": 2, "num_inference_steps": 2, "output_type": "np"}


PIPELINES = ["side", "lora", "text"]


@pytest.mark.parametrize("kind", PIPELINES)
def test_return_dict_false_gives_the_images_alone(kind):
    pipe, call = build(kind)
    as_dict = pipe(**call, generator=generator(5))
    as_tuple = pipe(**call, generator=generator(5), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1  # diffusers' convention; the targets stay in the dataclass
    assert np.array_equal(as_tuple[0], as_dict.images)


@pytest.mark.parametrize("kind", PIPELINES)
def test_callback_on_step_end_sees_every_step_and_its_replacement_is_used(kind):
    pipe, call = build(kind)
    name = pipe._callback_tensor_inputs[0]
    steps = []

    def flatten(pipeline, i, t, tensors):
        steps.append((i, int(t), tuple(tensors[name].shape)))
        return {name: torch.zeros_like(tensors[name])}

    plain = pipe(**call, generator=generator(6)).images
    flattened = pipe(**call, generator=generator(6), callback_on_step_end=flatten).images
    sample_shape = (2, *pipe.sample_shape)
    assert [(i, shape) for i, _, shape in steps] == [(0, sample_shape), (1, sample_shape)]
    assert not np.array_equal(plain, flattened)
    with torch.no_grad():
        assert np.array_equal(flattened, pipe.postprocess(pipe.decode_samples(torch.zeros(sample_shape)), "np"))


@pytest.mark.parametrize("kind", PIPELINES)
@pytest.mark.parametrize(
    "bad, message",
    [
        ({"num_inference_steps": 0}, "num_inference_steps=0 must be a positive integer"),
        ({"num_inference_steps": 1.5}, "num_inference_steps=1.5 must be a positive integer"),
        ({"batch_size": True}, "batch_size=True must be a positive integer"),
        ({"generator": [torch.Generator()] * 3}, "list of 3 generators for batch_size=2"),
        ({"output_type": "latent"}, "output_type='latent' is not supported"),
    ],
)
def test_every_pipeline_refuses_bad_sampling_inputs_before_the_unet_runs(kind, bad, message):
    pipe, call = build(kind)
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=message):
        pipe(**{**call, **bad})
    assert calls == []


def test_lora_branch_refuses_a_latent_target():
    with pytest.raises(ValueError, match="latent target .* audit it with the classifier branch"):
        SIDELoRAPipeline.from_base(latent_pipeline(), 3, 4)
