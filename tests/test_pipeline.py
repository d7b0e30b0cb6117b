"""SIDEPipeline: parity with diffusers' unconditional pipelines, guidance, loading and input checks."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from conftest import make_tiny_unet
from diffusers_side import SIDEPipeline, TimeDependentClassifier
from diffusers_side.guidance.classifier import ClassifierGuide
from diffusers_side.guidance.clean_image import CleanImageGuide
from diffusers_side.guidance.noise import alpha_bar

TRAIN_STEPS = 100  # num_train_timesteps of the tiny schedulers


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def brightness_classifier() -> TimeDependentClassifier:
    """A classifier with a known preference: class 0 = dark images, class 1 = bright images, at every t."""
    torch.manual_seed(0)
    classifier = TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=2, base_channels=8)
    scheduler = DDPMScheduler(num_train_timesteps=TRAIN_STEPS)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    for _ in range(150):
        labels = torch.randint(0, 2, (64,))
        clean = (labels.float() * 1.4 - 0.7)[:, None, None, None] + 0.2 * torch.randn(64, 1, 16, 16)
        t = torch.randint(0, TRAIN_STEPS, (64,))
        noisy = scheduler.add_noise(clean, torch.randn_like(clean), t)
        loss = torch.nn.functional.cross_entropy(classifier(noisy, t), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return classifier.eval()


def p_target(classifier, images, target):
    with torch.no_grad():
        return classifier(images * 2 - 1, torch.zeros(len(images))).softmax(-1)[:, target].mean().item()


@pytest.mark.parametrize(
    "reference_pipeline, scheduler",
    [(DDPMPipeline, DDPMScheduler(num_train_timesteps=TRAIN_STEPS)), (DDIMPipeline, DDIMScheduler(num_train_timesteps=TRAIN_STEPS))],
)
@pytest.mark.parametrize("with_classifier", [False, True])
def test_guidance_zero_is_bit_identical_to_diffusers(reference_pipeline, scheduler, with_classifier, brightness_classifier):
    unet = make_tiny_unet()
    expected = reference_pipeline(unet, scheduler)(batch_size=3, num_inference_steps=8, generator=generator(3), output_type="np").images
    pipe = SIDEPipeline(unet, scheduler, brightness_classifier if with_classifier else None)
    out = pipe(batch_size=3, num_inference_steps=8, guidance_scale=0, generator=generator(3), output_type="np")
    assert np.array_equal(out.images, expected)
    assert out.targets is None


def test_per_image_generators_match_single_image_runs():
    pipe = SIDEPipeline(make_tiny_unet(), DDPMScheduler(num_train_timesteps=TRAIN_STEPS))
    batch = pipe(batch_size=2, num_inference_steps=5, generator=[generator(10), generator(11)], output_type="pt").images
    single = pipe(batch_size=1, num_inference_steps=5, generator=[generator(11)], output_type="pt").images
    torch.testing.assert_close(batch[1:], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "scheduler",
    [
        DDPMScheduler(num_train_timesteps=TRAIN_STEPS),
        DDIMScheduler(num_train_timesteps=TRAIN_STEPS, clip_sample=False),
        EulerDiscreteScheduler(num_train_timesteps=TRAIN_STEPS),
        EulerAncestralDiscreteScheduler(num_train_timesteps=TRAIN_STEPS),
        DPMSolverMultistepScheduler(num_train_timesteps=TRAIN_STEPS),
        UniPCMultistepScheduler(num_train_timesteps=TRAIN_STEPS),
    ],
    ids=lambda s: type(s).__name__,
)
def test_guidance_raises_probability_of_target(scheduler, brightness_classifier):
    pipe = SIDEPipeline(make_tiny_unet(), scheduler, brightness_classifier)
    for target in (0, 1):
        plain = pipe(batch_size=8, num_inference_steps=10, guidance_scale=0, generator=generator(), output_type="pt")
        guided = pipe(batch_size=8, target=target, guidance_scale=8.0, num_inference_steps=10, generator=generator(), output_type="pt")
        assert guided.targets.tolist() == [target] * 8
        p_guided = p_target(brightness_classifier, guided.images, target)
        assert p_guided > 0.75, f"p(target={target} | x_0) = {p_guided:.2f} under guidance"
        assert p_guided > p_target(brightness_classifier, plain.images, target)


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, EulerDiscreteScheduler])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_guidance_shifts_the_same_noise_for_every_parameterisation(scheduler_class, prediction_type, brightness_classifier):
    """A v- or x0-predicting model is guided exactly as its epsilon equivalent: eps - sqrt(1 - abar_t) * lambda * g."""
    eps_pipe = SIDEPipeline(make_tiny_unet(), scheduler_class(num_train_timesteps=TRAIN_STEPS), brightness_classifier)
    pipe = SIDEPipeline(make_tiny_unet(), scheduler_class(num_train_timesteps=TRAIN_STEPS, prediction_type=prediction_type), brightness_classifier)
    for p in (eps_pipe, pipe):
        p.scheduler.set_timesteps(10)
    step_index, t = 3, pipe.scheduler.timesteps[3]
    torch.manual_seed(0)
    x_t, eps, targets = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    abar = alpha_bar(pipe.scheduler, step_index, t).float()
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x0 = (x_t - sigma * eps) / alpha
    output = alpha * eps - sigma * x0 if prediction_type == "v_prediction" else x0
    guide = ClassifierGuide(brightness_classifier)
    guided = guide.guided_output(pipe, x_t, t, step_index, output, targets, scale=3.0)
    implied_eps = alpha * guided + sigma * x_t if prediction_type == "v_prediction" else (x_t - alpha * guided) / sigma
    expected = guide.guided_output(eps_pipe, x_t, t, step_index, eps, targets, scale=3.0)
    gradient = guide.log_prob_gradient(eps_pipe, x_t, t, abar, targets)
    torch.testing.assert_close(expected, eps - sigma * 3.0 * gradient, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(implied_eps, expected, atol=1e-4, rtol=1e-4)


def test_alpha_bar_of_sigma_schedulers_matches_training_schedule():
    pipe = SIDEPipeline(make_tiny_unet(), EulerDiscreteScheduler(num_train_timesteps=TRAIN_STEPS, timestep_spacing="leading"))
    pipe.scheduler.set_timesteps(10)
    for i, t in enumerate(pipe.scheduler.timesteps):
        torch.testing.assert_close(alpha_bar(pipe.scheduler, i, t).float(), pipe.scheduler.alphas_cumprod[int(t)], atol=1e-6, rtol=1e-5)


def test_random_targets_are_seeded_and_cover_conditions(brightness_classifier):
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS), brightness_classifier)
    first = pipe(batch_size=16, guidance_scale=1.0, num_inference_steps=2, generator=generator(5), output_type="np")
    again = pipe(batch_size=16, guidance_scale=1.0, num_inference_steps=2, generator=generator(5), output_type="np")
    assert torch.equal(first.targets, again.targets) and np.array_equal(first.images, again.images)
    assert set(first.targets.tolist()) == {0, 1}


def test_classifier_left_as_it_was(brightness_classifier):
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS), brightness_classifier)
    brightness_classifier.train()
    try:
        pipe(batch_size=2, target=1, guidance_scale=1.0, num_inference_steps=2)
        assert brightness_classifier.training
        assert all(p.requires_grad for p in brightness_classifier.parameters())
    finally:
        brightness_classifier.eval()


def test_output_types():
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS))
    assert pipe(num_inference_steps=2, output_type="pil").images[0].size == (16, 16)
    assert pipe(num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 1)
    images = pipe(num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 1, 16, 16) and 0 <= images.min() and images.max() <= 1


def assert_same_weights(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def test_save_and_load_round_trip(tmp_path, brightness_classifier):
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS), brightness_classifier)
    pipe.save_pretrained(tmp_path)
    assert sorted(p.name for p in (tmp_path / "classifier").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["classifier"] == ["diffusers_side.models.classifier", "TimeDependentClassifier"]

    loaded = SIDEPipeline.from_pretrained(tmp_path)
    assert_same_weights(loaded.unet, pipe.unet)
    assert_same_weights(loaded.classifier, pipe.classifier)
    assert isinstance(loaded.scheduler, DDIMScheduler)
    assert_same_weights(TimeDependentClassifier.from_pretrained(tmp_path, subfolder="classifier"), pipe.classifier)


def test_classifier_config_carries_label_info(tmp_path):
    info = {"num_kept": 3, "cohesion": [0.9, 0.8, 0.7], "extractor": "unet", "K": 10, "tau": 0.6, "n_syn": 200}
    TimeDependentClassifier(in_channels=1, sample_size=8, num_classes=3, base_channels=4, label_info=info).save_pretrained(tmp_path)
    reloaded = TimeDependentClassifier.from_pretrained(tmp_path)
    assert reloaded.config.label_info == info


def test_time_independent_classifier_ignores_timestep():
    torch.manual_seed(0)
    classifier = TimeDependentClassifier(in_channels=3, sample_size=8, num_classes=4, base_channels=4, time_dependent=False).eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(classifier(x, 0), classifier(x, torch.tensor([500.0, 999.0])))
    assert classifier(x).shape == (2, 4)
    assert not hasattr(classifier, "time_embedding")


def test_from_pipe_adds_classifier(brightness_classifier):
    ddpm = DDPMPipeline(make_tiny_unet(), DDPMScheduler(num_train_timesteps=TRAIN_STEPS))
    pipe = SIDEPipeline.from_pipe(ddpm, classifier=brightness_classifier)
    assert pipe.unet is ddpm.unet and pipe.classifier is brightness_classifier
    assert pipe(batch_size=2, target=1, num_inference_steps=2, output_type="pt").targets.tolist() == [1, 1]


def test_loads_from_hub_repo_id_through_offline_cache(tmp_path, brightness_classifier):
    """`from_pretrained("user/repo")` resolves through huggingface_hub's cache layout with HF_HUB_OFFLINE=1."""
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS), brightness_classifier)
    local = tmp_path / "local"
    pipe.save_pretrained(local)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = tmp_path / "hub" / "models--auditor--side-digits"
    shutil.copytree(local, repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)

    script = (
        "import torch; from diffusers_side import SIDEPipeline\n"
        "hub = SIDEPipeline.from_pretrained('auditor/side-digits')\n"
        f"local = SIDEPipeline.from_pretrained({str(local)!r})\n"
        "for name in ('unet', 'classifier'):\n"
        "    a, b = getattr(hub, name).state_dict(), getattr(local, name).state_dict()\n"
        "    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name\n"
        "print('hub-ok', type(hub.classifier).__name__)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hub-ok TimeDependentClassifier" in result.stdout


def test_pickle_only_checkpoint_is_refused_with_opt_in_hint(tmp_path):
    SIDEPipeline(make_tiny_unet(), DDPMScheduler(num_train_timesteps=TRAIN_STEPS)).save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(OSError, match="use_safetensors=False"):
        SIDEPipeline.from_pretrained(tmp_path)
    assert isinstance(SIDEPipeline.from_pretrained(tmp_path, use_safetensors=False), SIDEPipeline)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": 2}, r"target=2 is out of range.*0\.\.1"),
        ({"target": -1}, r"target=-1 is out of range"),
        ({"target": [0, 1, 1], "batch_size": 2}, r"Got 3 targets for batch_size=2"),
        ({"guidance_scale": -1.0}, r"guidance_scale=-1.0 must be finite and >= 0"),
        ({"batch_size": 3, "generator": [torch.Generator(), torch.Generator()]}, r"list of 2 generators for batch_size=3"),
        ({"output_type": "latent"}, r"output_type='latent' is not supported"),
        ({"guidance_space": "x_0"}, r"guidance_space='x_0' is not one of \('xt', 'x0'\); use 'xt'"),
    ],
)
def test_bad_inputs_raise_before_sampling(kwargs, message, brightness_classifier):
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS), brightness_classifier)
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=message):
        pipe(num_inference_steps=2, **{"guidance_scale": 1.0, **kwargs})
    assert calls == []


def test_guidance_without_classifier_raises():
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS))
    with pytest.raises(ValueError, match="need a classifier"):
        pipe(guidance_scale=2.0, num_inference_steps=2)


@pytest.mark.parametrize(
    "classifier_kwargs, message",
    [({"in_channels": 3, "sample_size": 16}, "expects 3x16x16 images but the UNet samples 1x16x16"),
     ({"in_channels": 1, "sample_size": 8}, "expects 1x8x8 images but the UNet samples 1x16x16")],
)
def test_classifier_shape_mismatch_is_refused(classifier_kwargs, message):
    classifier = TimeDependentClassifier(num_classes=2, base_channels=4, **classifier_kwargs)
    with pytest.raises(ValueError, match=message):
        SIDEPipeline(make_tiny_unet(), DDIMScheduler(), classifier)


def test_non_finite_gradient_names_the_step(brightness_classifier):
    classifier = TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=2, base_channels=8).eval()
    classifier.load_state_dict(brightness_classifier.state_dict())
    with torch.no_grad():
        classifier.head.weight.fill_(float("nan"))
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS), classifier)
    with pytest.raises(ValueError, match=r"not finite at step 0 \(t=\d+\)"):
        pipe(target=0, guidance_scale=1.0, num_inference_steps=3)


def test_classifier_rejects_tiny_images_and_bad_layout():
    with pytest.raises(ValueError, match="sample_size=4 is too small"):
        TimeDependentClassifier(sample_size=4)
    with pytest.raises(ValueError, match="layers='resnet50' is not a known layout"):
        TimeDependentClassifier(layers="resnet50")


@pytest.fixture(scope="module")
def dark_and_bright_exemplars():
    """Two surrogate conditions as exemplar sets: label 0 = dark images, label 1 = bright images."""
    from diffusers_side.guidance.exemplar import ExemplarPosterior

    torch.manual_seed(0)
    labels = torch.tensor([0, 1] * 10)
    images = (labels.float() * 1.4 - 0.7)[:, None, None, None] + 0.1 * torch.randn(20, 1, 16, 16)
    return ExemplarPosterior(images.clamp(-1, 1), labels, num_classes=2)


@pytest.mark.parametrize("scheduler", [DDPMScheduler(num_train_timesteps=TRAIN_STEPS), DDIMScheduler(num_train_timesteps=TRAIN_STEPS)])
def test_exemplar_guidance_reaches_its_target_without_a_classifier(scheduler, dark_and_bright_exemplars):
    pipe = SIDEPipeline(make_tiny_unet(), scheduler)
    for target in (0, 1):
        out = pipe(batch_size=4, target=target, guidance_scale=1.0, num_inference_steps=10, generator=generator(),
                   output_type="pt", exemplars=dark_and_bright_exemplars)
        assert out.targets.tolist() == [target] * 4
        assert dark_and_bright_exemplars.predict(out.images * 2 - 1, torch.tensor(0.999)).tolist() == [target] * 4


def test_exemplar_guidance_at_scale_zero_is_unguided(dark_and_bright_exemplars):
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS))
    plain = pipe(batch_size=2, num_inference_steps=6, guidance_scale=0, generator=generator(), output_type="pt").images
    zero = pipe(batch_size=2, num_inference_steps=6, guidance_scale=0, generator=generator(), output_type="pt",
                exemplars=dark_and_bright_exemplars).images
    assert torch.equal(plain, zero)


def test_guidance_window_guides_only_inside_it(brightness_classifier):
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS), brightness_classifier)
    def run(**kwargs):
        return pipe(batch_size=2, num_inference_steps=6, generator=generator(), output_type="pt", **kwargs).images

    plain = run(guidance_scale=0)
    with pytest.raises(ValueError, match=r"guidance_window=\(1000, 2000\) holds none of the 6 sampling timesteps"):
        run(target=1, guidance_scale=5.0, guidance_window=(1000, 2000))  # issue 21, defect 4: no longer silently unguided
    everywhere = run(target=1, guidance_scale=5.0)
    wide = run(target=1, guidance_scale=5.0, guidance_window=(0, TRAIN_STEPS))
    assert torch.equal(wide, everywhere)
    assert not torch.equal(everywhere, plain)


def test_exemplar_and_window_bad_input(dark_and_bright_exemplars):
    from diffusers_side.guidance.exemplar import ExemplarPosterior

    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS))
    with pytest.raises(ValueError, match=r"guidance_window=\(500, 100\) must be \(t_min, t_max\)"):
        pipe(target=0, guidance_scale=1.0, exemplars=dark_and_bright_exemplars, guidance_window=(500, 100))
    small = ExemplarPosterior(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), num_classes=2)
    with pytest.raises(ValueError, match=r"exemplars are \(1, 8, 8\) images but the UNet samples \(1, 16, 16\)"):
        pipe(target=0, guidance_scale=1.0, exemplars=small)
    with pytest.raises(ValueError, match="target=5 is out of range: there are 2 surrogate conditions"):
        pipe(target=5, guidance_scale=1.0, exemplars=dark_and_bright_exemplars)


# --- guidance on the predicted clean image (guidance_space="x0") --------------------------------------


@pytest.mark.parametrize(
    "reference_pipeline, scheduler",
    [(DDPMPipeline, DDPMScheduler(num_train_timesteps=TRAIN_STEPS)), (DDIMPipeline, DDIMScheduler(num_train_timesteps=TRAIN_STEPS))],
)
def test_x0_guidance_at_scale_zero_is_bit_identical_to_diffusers(reference_pipeline, scheduler, brightness_classifier):
    unet = make_tiny_unet()
    expected = reference_pipeline(unet, scheduler)(batch_size=3, num_inference_steps=8, generator=generator(3), output_type="np").images
    pipe = SIDEPipeline(unet, scheduler, brightness_classifier)
    out = pipe(batch_size=3, num_inference_steps=8, guidance_scale=0, generator=generator(3), output_type="np", guidance_space="x0")
    assert np.array_equal(out.images, expected)


def clean_image_log_prob_gradient(unet, classifier, x_t, t, abar, targets, prediction_type="epsilon"):
    """g = grad_{x_t} log p(c | clamp(x0_hat, -1, 1), t=0), written out independently of the pipeline; and eps."""
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x = x_t.clone().requires_grad_(True)
    output = unet(x, t).sample
    eps = alpha * output + sigma * x if prediction_type == "v_prediction" else output
    x0_hat = ((x - sigma * eps) / alpha).clamp(-1, 1)
    log_p = classifier(x0_hat, torch.zeros(len(x), dtype=torch.long)).log_softmax(-1)[torch.arange(len(x)), targets].sum()
    (gradient,) = torch.autograd.grad(log_p, x)
    return gradient, eps.detach()


def rms(images):
    return images.pow(2).mean(dim=(1, 2, 3)).sqrt()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_guidance_moves_eps_along_the_clean_image_gradient_by_lambda_times_its_rms(prediction_type, brightness_classifier):
    unet = make_tiny_unet()
    pipe = SIDEPipeline(unet, DDIMScheduler(num_train_timesteps=TRAIN_STEPS, prediction_type=prediction_type), brightness_classifier)
    pipe.scheduler.set_timesteps(10)
    step_index, t = 3, pipe.scheduler.timesteps[3]
    abar = pipe.scheduler.alphas_cumprod[int(t)]
    torch.manual_seed(0)
    clean = torch.tensor([-0.6, 0.6, 0.1, -0.2])[:, None, None, None] + 0.1 * torch.randn(4, 1, 16, 16)
    x_t = abar.sqrt() * clean + (1 - abar).sqrt() * torch.randn(4, 1, 16, 16)
    targets = torch.tensor([1, 0, 1, 0])  # one target per image

    guided = CleanImageGuide(brightness_classifier).guided_output(pipe, x_t, t, step_index, None, targets, scale=0.3)

    gradient, eps = clean_image_log_prob_gradient(unet, brightness_classifier, x_t, t, abar, targets, prediction_type)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    implied_eps = alpha * guided + sigma * x_t if prediction_type == "v_prediction" else guided
    change = implied_eps - eps
    assert (rms(gradient) > 0).all()
    torch.testing.assert_close(rms(change), 0.3 * rms(eps), atol=1e-5, rtol=1e-4)
    direction = -gradient / rms(gradient)[:, None, None, None]
    torch.testing.assert_close(change / rms(change)[:, None, None, None], direction, atol=1e-4, rtol=1e-3)


def test_x0_gradient_matches_finite_differences(brightness_classifier):
    """The chain rule through the UNet, checked against central differences of log p(c | x0_hat(x_t)) in float64."""
    pipe = SIDEPipeline(make_tiny_unet().double(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS), brightness_classifier.double())
    try:
        pipe.scheduler.set_timesteps(10)
        t = pipe.scheduler.timesteps[5]
        abar = pipe.scheduler.alphas_cumprod[int(t)].double()
        torch.manual_seed(1)
        x_t = abar.sqrt() * 0.3 * torch.randn(2, 1, 16, 16, dtype=torch.float64) + (1 - abar).sqrt() * torch.randn(2, 1, 16, 16, dtype=torch.float64)
        targets = torch.tensor([0, 1])
        _, gradient = CleanImageGuide(pipe.classifier).clean_image_gradient(pipe, x_t, t, abar, targets)

        def log_p(x):
            eps = pipe.unet(x, t).sample
            x0_hat = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
            return brightness_classifier(x0_hat, torch.zeros(2, dtype=torch.long)).log_softmax(-1)[torch.arange(2), targets].sum()

        direction = torch.randn_like(x_t)
        with torch.no_grad():
            numeric = (log_p(x_t + 1e-6 * direction) - log_p(x_t - 1e-6 * direction)) / 2e-6
        torch.testing.assert_close((gradient * direction).sum(), numeric, atol=1e-6, rtol=1e-5)
    finally:
        brightness_classifier.float()


@pytest.mark.parametrize(
    "scheduler",
    [DDPMScheduler(num_train_timesteps=TRAIN_STEPS), DDIMScheduler(num_train_timesteps=TRAIN_STEPS)],
    ids=lambda s: type(s).__name__,
)
def test_x0_guidance_raises_probability_of_target(scheduler, brightness_classifier):
    pipe = SIDEPipeline(make_tiny_unet(), scheduler, brightness_classifier)
    plain = pipe(batch_size=8, num_inference_steps=10, guidance_scale=0, generator=generator(), output_type="pt")
    for target in (0, 1):
        guided = pipe(batch_size=8, target=target, guidance_scale=1.0, num_inference_steps=10, generator=generator(),
                      output_type="pt", guidance_space="x0")
        p_guided = p_target(brightness_classifier, guided.images, target)
        assert p_guided > 0.75, f"p(target={target} | x_0) = {p_guided:.2f} under x0 guidance"
        assert p_guided > p_target(brightness_classifier, plain.images, target)


def test_x0_guidance_window_and_unet_left_as_it_was(brightness_classifier):
    unet = make_tiny_unet()
    pipe = SIDEPipeline(unet, DDIMScheduler(num_train_timesteps=TRAIN_STEPS), brightness_classifier)

    def run(**kwargs):
        return pipe(batch_size=2, num_inference_steps=6, generator=generator(), output_type="pt", **kwargs).images

    plain = run(guidance_scale=0)
    late = run(target=1, guidance_scale=0.5, guidance_window=(0, 40), guidance_space="x0")
    on_x0 = run(target=1, guidance_scale=0.5, guidance_space="x0")
    on_xt = run(target=1, guidance_scale=0.5)
    assert not torch.equal(late, plain) and not torch.equal(late, on_x0)
    assert not torch.equal(on_x0, plain) and not torch.equal(on_x0, on_xt)
    assert all(p.requires_grad for p in unet.parameters()) and all(p.grad is None for p in unet.parameters())


def test_x0_guidance_refuses_exemplars_before_sampling(dark_and_bright_exemplars):
    pipe = SIDEPipeline(make_tiny_unet(), DDIMScheduler(num_train_timesteps=TRAIN_STEPS))
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=r"guidance_space='x0' guides with a classifier.*Drop exemplars="):
        pipe(target=0, guidance_scale=1.0, exemplars=dark_and_bright_exemplars, guidance_space="x0", num_inference_steps=2)
    assert calls == []
