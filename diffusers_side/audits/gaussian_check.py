"""An exactness check for the divergence estimator: Gaussian data, whose diffused densities are known in closed form.

Data x_0 ~ N(mu, Sigma), Sigma = U diag(s^2) U^T (U a seeded random rotation, or the identity). In the
scaled variable y = x_t / sqrt(abar_t) = x_0 + sigma_t * noise, y ~ N(mu, Sigma + sigma_t^2 I), and the
exact noise prediction is E[noise | y] = sigma_t (Sigma + sigma_t^2 I)^{-1} (y - mu). [`GaussianEpsilonModel`]
computes it for float timesteps of a real diffusers `DDPMScheduler` (sigma_t interpolated in log sigma, as
the ODE does), so the probability-flow ODE's p_theta is exactly N(mu, Sigma + sigma_min^2 I) and
`ode_log_likelihood` can be compared with [`exact_log_density`]; for one reference image the divergence
has the closed form [`exact_single_image_divergence`].

With an isotropic Sigma the Jacobian of the drift is a multiple of the identity and a Rademacher probe
gives its trace exactly; a rotated, anisotropic Sigma (``rotation_seed``) exercises the Hutchinson noise.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

from .likelihood import NoiseLevels


class GaussianEpsilonModel(ModelMixin, ConfigMixin):
    """
    The exact epsilon-predictor for Gaussian data N(mu, Sigma) under a `DDPMScheduler` schedule.

    Args:
        in_channels (`int`), sample_size (`int`): the image shape (C, H, W) = (in_channels, sample_size, sample_size).
        mean (`float`): mu, the same in every pixel.
        stds (`list[float]`, *optional*): the D standard deviations s along Sigma's axes; default ``std`` in all.
        std (`float`): s when ``stds`` is not given.
        rotation_seed (`int`, *optional*): seeds a random orthogonal U (QR of a Gaussian matrix); None: U = I.
        num_train_timesteps (`int`), beta_schedule (`str`): the `DDPMScheduler` whose abar_t the model follows.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        sample_size: int = 2,
        mean: float = 0.0,
        stds: list[float] | None = None,
        std: float = 0.5,
        rotation_seed: int | None = None,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
    ):
        super().__init__()
        dim = in_channels * sample_size * sample_size
        variances = torch.tensor(stds if stds is not None else [std] * dim, dtype=torch.float64).square()
        if len(variances) != dim:
            raise ValueError(f"stds has {len(variances)} entries; the image has {dim} pixels.")
        rotation = torch.eye(dim, dtype=torch.float64)
        if rotation_seed is not None:
            gaussian = torch.randn(dim, dim, generator=torch.Generator().manual_seed(rotation_seed), dtype=torch.float64)
            rotation = torch.linalg.qr(gaussian).Q
        self.register_buffer("rotation", rotation, persistent=False)
        self.register_buffer("variances", variances, persistent=False)
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
        self.levels = NoiseLevels(self.scheduler.alphas_cumprod)

    def covariance(self, extra_variance: float = 0.0) -> torch.Tensor:
        """Sigma + extra_variance * I."""
        return (self.rotation * (self.variances + extra_variance)) @ self.rotation.T

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> UNet2DOutput:
        sigma = self.levels.log_sigma(torch.as_tensor(timestep).expand(len(sample))).double().exp()[:, None]
        y = sample.flatten(1).double() * torch.sqrt(1 + sigma**2)  # y = x_t / sqrt(abar_t)
        coordinates = ((y - self.config.mean) @ self.rotation) / (self.variances + sigma**2)
        epsilon = sigma * (coordinates @ self.rotation.T)  # sigma (Sigma + sigma^2 I)^{-1} (y - mu)
        return UNet2DOutput(sample=epsilon.to(sample.dtype).reshape(sample.shape))

    def sample_data(self, num_images: int, generator: torch.Generator) -> torch.Tensor:
        """num_images draws of x_0 ~ N(mu, Sigma), shaped (N, C, H, W)."""
        dim = len(self.variances)
        z = torch.randn(num_images, dim, generator=generator, dtype=torch.float64) * self.variances.sqrt()
        shape = (self.config.in_channels, self.config.sample_size, self.config.sample_size)
        return (self.config.mean + z @ self.rotation.T).float().reshape(num_images, *shape)


def exact_log_density(model: GaussianEpsilonModel, images: torch.Tensor) -> torch.Tensor:
    """log N(x; mu, Sigma + sigma_min^2 I): the exact p_theta of the probability-flow ODE, per image (nats)."""
    covariance = model.covariance(model.levels.sigma_min**2)
    mean = torch.full((covariance.shape[0],), float(model.config.mean), dtype=torch.float64)
    normal = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance)
    return normal.log_prob(images.flatten(1).double())


def exact_single_image_divergence(model: GaussianEpsilonModel, image: torch.Tensor, eps: float) -> float:
    """KL(N(x_1, eps^2 I) || N(mu, C)), C = Sigma + sigma_min^2 I: M for a one-image data set, in closed form."""
    covariance = model.covariance(model.levels.sigma_min**2)
    dim = covariance.shape[0]
    precision = torch.linalg.inv(covariance)
    offset = image.flatten().double() - model.config.mean
    trace = eps**2 * torch.trace(precision)
    mahalanobis = offset @ precision @ offset
    log_det_ratio = torch.logdet(covariance) - dim * math.log(eps**2)
    return float(0.5 * (trace + mahalanobis - dim + log_det_ratio))
