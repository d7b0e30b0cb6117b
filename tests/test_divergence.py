"""The memorization divergence (SIDE Def. 1): exactness on Gaussian data, input errors, determinism, ordering."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.models.unets.unet_2d import UNet2DOutput

from conftest import make_tiny_unet
from diffusers_side.audits.divergence import log_mixture_density, memorization_divergence
from diffusers_side.audits.gaussian_check import (
    GaussianEpsilonModel,
    exact_log_density,
    exact_single_image_divergence,
)
from diffusers_side.audits.likelihood import NoiseLevels, ode_log_likelihood


def gaussian(rotation_seed=None, stds=None, std=0.05):
    # 2 channels x 2 x 2 = 8 dimensions; log-densities well away from 0, so 5 % is a real bound
    return GaussianEpsilonModel(in_channels=2, sample_size=2, stds=stds, std=std, rotation_seed=rotation_seed)


def test_ode_log_density_matches_exact_gaussian_within_5_percent():
    model = gaussian()
    images = model.sample_data(32, torch.Generator().manual_seed(0))
    estimate = ode_log_likelihood(model, model.scheduler.alphas_cumprod, images, generator=torch.Generator().manual_seed(1))
    exact = exact_log_density(model, images).numpy()
    assert np.all(np.abs(estimate.log_px - exact) <= 0.05 * np.abs(exact))
    assert np.allclose(estimate.bits_per_dim, -estimate.log_px / (8 * math.log(2)))


def test_hutchinson_is_unbiased_on_a_rotated_anisotropic_gaussian():
    stds = [0.02, 0.03, 0.05, 0.05, 0.08, 0.1, 0.15, 0.2]
    model = gaussian(rotation_seed=3, stds=stds)
    images = model.sample_data(64, torch.Generator().manual_seed(0))
    exact = exact_log_density(model, images).numpy()
    estimate = ode_log_likelihood(
        model, model.scheduler.alphas_cumprod, images, num_probes=8, generator=torch.Generator().manual_seed(1)
    )
    errors = estimate.log_px - exact
    assert abs(errors.mean()) <= 0.05 * abs(exact.mean())
    assert np.any(np.abs(errors) > 1e-3)  # a non-diagonal Jacobian: the probes do add noise, and it averages out


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_v_and_sample_predictions_give_the_epsilon_density(prediction_type):
    model = gaussian()
    levels = NoiseLevels(model.scheduler.alphas_cumprod)

    def converted(sample, timestep):
        epsilon = model(sample, timestep).sample
        sigma = levels.log_sigma(timestep).exp()[:, None, None, None]
        alpha, noise = 1 / torch.sqrt(1 + sigma**2), sigma / torch.sqrt(1 + sigma**2)  # sqrt(abar), sqrt(1 - abar)
        clean = (sample - noise * epsilon) / alpha
        return UNet2DOutput(sample=alpha * epsilon - noise * clean if prediction_type == "v_prediction" else clean)

    images = model.sample_data(4, torch.Generator().manual_seed(0))
    kwargs = {"generator": torch.Generator().manual_seed(1), "rtol": 1e-6, "atol": 1e-6}
    reference = ode_log_likelihood(model, model.scheduler.alphas_cumprod, images, **kwargs).log_px
    kwargs["generator"] = torch.Generator().manual_seed(1)
    other = ode_log_likelihood(converted, model.scheduler.alphas_cumprod, images, prediction_type, **kwargs).log_px
    np.testing.assert_allclose(other, reference, rtol=1e-3)


def test_divergence_matches_the_closed_form_kl_within_5_percent():
    model = gaussian()
    image = model.sample_data(1, torch.Generator().manual_seed(0))
    eps = 0.02
    # q_eps of two copies of one image is N(x_1, eps^2 I): KL to the Gaussian p_theta in closed form
    result = memorization_divergence((model, model.scheduler), image.repeat(2, 1, 1, 1), eps=eps, num_samples=2000, batch_size=2000)
    exact = exact_single_image_divergence(model, image[0], eps)
    assert abs(result.train.value - exact) <= 0.05 * exact
    assert result.train.ci_low < result.train.value < result.train.ci_high


def test_log_mixture_density_is_exact():
    centers = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[0.5, 0.2]], dtype=torch.float64)
    eps = 0.3
    components = [math.exp(-((0.5 - c) ** 2 + 0.2**2) / (2 * eps**2)) / (2 * math.pi * eps**2) for c in (0.0, 1.0)]
    assert log_mixture_density(x, centers, eps).item() == pytest.approx(math.log(sum(components) / 2), rel=1e-12)


class MemorizingModel(torch.nn.Module):
    """The exact denoiser of the empirical training distribution: its ODE density is q_{sigma_min} of the set."""

    def __init__(self, train, scheduler):
        super().__init__()
        self.centers, self.levels = train.flatten(1).double(), NoiseLevels(scheduler.alphas_cumprod)

    def forward(self, sample, timestep):
        sigma = self.levels.log_sigma(timestep).double().exp()[:, None]
        y = sample.flatten(1).double() * torch.sqrt(1 + sigma**2)
        weights = torch.softmax(-torch.cdist(y, self.centers).square() / (2 * sigma**2), dim=1)
        return UNet2DOutput(sample=((y - weights @ self.centers) / sigma).to(sample.dtype).reshape(sample.shape))


def test_a_memorizing_model_scores_lower_on_training_images_and_a_larger_gap():
    generalizing = gaussian(std=0.3)
    data = generalizing.sample_data(12, torch.Generator().manual_seed(0))
    train, holdout = data[:6], data[6:]
    memorizing = MemorizingModel(train, generalizing.scheduler)
    kwargs = {"num_samples": 24, "batch_size": 24, "seed": 0, "rtol": 1e-2, "atol": 1e-2}  # orders of magnitude apart
    memo = memorization_divergence((memorizing, generalizing.scheduler), train, holdout, **kwargs)
    general = memorization_divergence((generalizing, generalizing.scheduler), train, holdout, **kwargs)
    assert memo.train.ci_high < general.train.ci_low  # smaller M = more memorization (paper, Sec. 4.1)
    assert memo.gap_ci[0] > general.gap_ci[1]
    assert general.gap_ci[0] < 0 < general.gap_ci[1]  # a model of the distribution: no train-holdout gap
    # p_theta = q_{sigma_min} and eps = sigma_min by default, so M = 0 up to the estimator's error
    exact = memorization_divergence((memorizing, generalizing.scheduler), train, num_samples=24, num_probes=16, rtol=1e-5, atol=1e-5)
    assert abs(exact.train.value) < 0.2 < 0.01 * general.train.value


def test_same_seed_same_result_other_seed_other_draws():
    torch.manual_seed(0)
    unet = make_tiny_unet(sample_size=8)
    scheduler = DDPMScheduler(num_train_timesteps=100)
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    kwargs = {"num_samples": 3, "rtol": 1e-2, "atol": 1e-2}
    first = memorization_divergence((unet, scheduler), images[:3], images[3:], seed=5, **kwargs)
    again = memorization_divergence((unet, scheduler), images[:3], images[3:], seed=5, **kwargs)
    other = memorization_divergence((unet, scheduler), images[:3], images[3:], seed=6, **kwargs)
    assert (first.train, first.holdout, first.gap) == (again.train, again.holdout, again.gap)
    assert first.train.value != other.train.value
    assert all(math.isfinite(v) for v in (first.train.value, first.holdout.value, first.gap))


class Untouchable(torch.nn.Module):
    config = type("Config", (), {"in_channels": 1, "sample_size": 2})()

    def forward(self, *args):
        raise AssertionError("the model must not run before the inputs are checked")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"eps": 0.0}, "eps must be a positive finite number"),
        ({"eps": float("nan")}, "eps must be a positive finite number"),
        ({"reference_images": torch.zeros(1, 1, 2, 2)}, "needs at least 2"),
        ({"reference_images": torch.zeros(3, 1, 4, 4)}, r"have shape \(1, 4, 4\) but the model takes \(1, 2, 2\)"),
        ({"reference_images": torch.zeros(3, 4)}, r"must be a \(N, C, H, W\) tensor"),
        ({"reference_images": torch.full((3, 1, 2, 2), 2.0)}, r"pixels in \[-1, 1\]"),
        ({"holdout_images": torch.zeros(2, 1, 2, 2)}, "fewer than the 3 reference images"),
        ({"num_samples": 1}, "num_samples must be at least 2"),
        ({"pipe_or_unet_scheduler": object()}, r"a \(unet, scheduler\) pair"),
    ],
)
def test_bad_input_is_refused_before_the_model_runs(change, message):
    arguments = {
        "pipe_or_unet_scheduler": (Untouchable(), DDPMScheduler(num_train_timesteps=10)),
        "reference_images": torch.linspace(-1, 1, 12).reshape(3, 1, 2, 2),
        "holdout_images": None,
        "eps": 0.1,
        "num_samples": 4,
    }
    with pytest.raises(ValueError, match=message):
        memorization_divergence(**(arguments | change))
