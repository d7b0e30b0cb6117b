"""log p_theta(x) of a diffusers unconditional model by the probability-flow ODE (Song et al. 2021, App. D).

The model is a `UNet2DModel`-like network ``unet(x_t, t)`` (epsilon, v or sample prediction) with the
``alphas_cumprod`` (abar_t) of its scheduler. In the scaled variable y = x_t / sqrt(abar_t) the forward
process is y(sigma) = x_0 + sigma * noise with sigma_t = sqrt((1 - abar_t) / abar_t), and the
probability-flow ODE is the DDIM ODE dy/dsigma = eps_theta(x_t, t) (Song et al. 2021, DDIM Eq. 14). We
integrate it in s = log sigma, where it reads

    dy/ds = sigma * eps_theta(y / sqrt(1 + sigma^2), t(sigma)),

from sigma_min = sigma_0 (diffusers' timestep 0) to sigma_max = sigma_{T-1}, together with the
instantaneous change of variables d log p / ds = -div_y f, so that

    log p_theta(x) = log N(y(s_max); 0, (1 + sigma_max^2) I) + int_{s_min}^{s_max} div_y f ds,   y(s_min) = x.

The prior is the sampler's own x_T ~ N(0, I) written in y. Timesteps between diffusers' integers are
taken from a piecewise-linear interpolation of log sigma over t (`UNet2DModel` accepts float timesteps).
p_theta is therefore the model's density of *clean pixels plus N(0, sigma_min^2 I)*, in the model's
pixel units ([-1, 1]); its log on [0, 1] pixels is ``log_px + D * log(2)`` (the Jacobian of x -> (x + 1) / 2).

The divergence div_y f is estimated with Hutchinson's estimator, v^T (df/dy) v with Rademacher probes v
fixed along each trajectory (unbiased; Grathwohl et al. 2019), by one vector-Jacobian product per probe.
The ODE is solved with `scipy.integrate.solve_ivp` (adaptive RK45, rtol = atol = 1e-4 by default;
Song et al. use 1e-5), the whole batch as one state vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import logging
from scipy.integrate import solve_ivp

logger = logging.get_logger(__name__)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# Song et al. use 1e-5; on the embedded digits-rare model 1e-4 changes log p by about 0.01 nats per image
# (of ~660) at a third of the UNet evaluations, 1e-3 by about 0.5 nats at a seventh (docs/divergence.md).
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-4


class NoiseLevels:
    """The scheduler's noise levels sigma_t = sqrt((1 - abar_t) / abar_t) and the map log sigma -> float t.

    Args:
        alphas_cumprod: abar_t for t = 0 .. T-1 (a diffusers scheduler's ``alphas_cumprod``), decreasing.
    """

    def __init__(self, alphas_cumprod: torch.Tensor | np.ndarray):
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
        if abar.ndim != 1 or len(abar) < 2 or not np.all((abar > 0) & (abar < 1)) or np.any(np.diff(abar) >= 0):
            raise ValueError("alphas_cumprod must be a decreasing 1-D sequence in (0, 1) with at least 2 entries.")
        self.log_sigmas = 0.5 * (np.log1p(-abar) - np.log(abar))
        self.timesteps = np.arange(len(abar), dtype=np.float64)

    @property
    def sigma_min(self) -> float:
        return float(math.exp(self.log_sigmas[0]))

    @property
    def sigma_max(self) -> float:
        return float(math.exp(self.log_sigmas[-1]))

    def timestep(self, log_sigma: float) -> float:
        """The (float) timestep whose noise level is exp(log_sigma)."""
        return float(np.interp(log_sigma, self.log_sigmas, self.timesteps))

    def log_sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """log sigma at float timesteps (the inverse of `timestep`; for exact test models)."""
        values = np.interp(timestep.detach().cpu().double().numpy(), self.timesteps, self.log_sigmas)
        return torch.as_tensor(values, dtype=timestep.dtype, device=timestep.device)


def epsilon_from_output(output: torch.Tensor, sample: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """The noise prediction eps_theta(x_t, t) from a model output of any diffusers prediction type."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) x_0
        return math.sqrt(alpha_bar) * output + math.sqrt(1.0 - alpha_bar) * sample
    if prediction_type == "sample":  # x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps
        return (sample - math.sqrt(alpha_bar) * output) / math.sqrt(1.0 - alpha_bar)
    raise ValueError(f"Unsupported prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}.")


@dataclass
class LogLikelihood:
    """
    The probability-flow ODE's log-density of a batch.

    Args:
        log_px (`np.ndarray`): log p_theta(x) in nats per image, pixels in [-1, 1] (add D * log 2 for [0, 1]).
        bits_per_dim (`np.ndarray`): -log_px / (D * ln 2), the usual bits/dim on the [-1, 1] scale.
        num_function_evals (`int`): UNet evaluations the solver made (each with ``num_probes`` VJPs).
        sigma_min (`float`), sigma_max (`float`): the noise levels the ODE ran between.
    """

    log_px: np.ndarray
    bits_per_dim: np.ndarray
    num_function_evals: int
    sigma_min: float
    sigma_max: float


def model_device(unet) -> torch.device:
    """Where ``unet``'s parameters live (the CPU for a parameter-free module or a plain function)."""
    parameters = unet.parameters() if isinstance(unet, torch.nn.Module) else iter(())
    first = next(iter(parameters), None)
    return first.device if first is not None else torch.device("cpu")


class _ProbabilityFlow:
    """The right-hand side of the augmented ODE [y, int div f] in s = log sigma, for `solve_ivp`."""

    def __init__(self, unet, levels: NoiseLevels, prediction_type: str, shape: tuple, probes: torch.Tensor):
        self.unet, self.levels, self.prediction_type = unet, levels, prediction_type
        self.shape, self.probes = shape, probes  # probes: (num_probes, B, C, H, W), Rademacher
        self.device = model_device(unet)
        self.evals = 0

    def __call__(self, s: float, state: np.ndarray) -> np.ndarray:
        self.evals += 1
        batch = self.shape[0]
        sigma = math.exp(s)
        alpha_bar = 1.0 / (1.0 + sigma**2)
        t = torch.full((batch,), self.levels.timestep(s), dtype=torch.float32, device=self.device)
        y = torch.from_numpy(state[: -batch].reshape(self.shape)).to(self.device, torch.float32)
        with torch.enable_grad():
            y.requires_grad_(True)
            x_t = y * math.sqrt(alpha_bar)
            output = self.unet(x_t, t)
            output = output.sample if hasattr(output, "sample") else output[0]
            drift = sigma * epsilon_from_output(output, x_t, alpha_bar, self.prediction_type)
            divergence = torch.zeros(batch, dtype=torch.float64, device=y.device)
            for k, probe in enumerate(self.probes):  # Hutchinson: E_v[v^T (df/dy) v] = div_y f
                (vjp,) = torch.autograd.grad(drift, y, probe, retain_graph=k + 1 < len(self.probes))
                divergence += (vjp * probe).flatten(1).sum(1).double()
        divergence /= len(self.probes)
        return np.concatenate([drift.detach().cpu().double().numpy().ravel(), divergence.cpu().numpy()])


def prior_log_density(y: np.ndarray, sigma_max: float) -> np.ndarray:
    """log N(y; 0, (1 + sigma_max^2) I) per row: the sampler's x_T ~ N(0, I) in the scaled variable y."""
    variance = 1.0 + sigma_max**2
    dim = y.shape[1]
    return -0.5 * (dim * math.log(2 * math.pi * variance) + (y**2).sum(1) / variance)


@torch.no_grad()
def ode_log_likelihood(
    unet: torch.nn.Module,
    alphas_cumprod: torch.Tensor | np.ndarray,
    images: torch.Tensor,
    prediction_type: str = "epsilon",
    num_probes: int = 1,
    generator: torch.Generator | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> LogLikelihood:
    """
    log p_theta(x) of ``images`` by the probability-flow ODE with Hutchinson's trace estimator.

    Args:
        unet: called as ``unet(x_t, t)`` with float timesteps ``t`` of shape ``(B,)``; returns a tensor, a tuple
            or an object with ``.sample`` (a `UNet2DModel`).
        alphas_cumprod: the scheduler's abar_t, t = 0 .. T-1.
        images (`torch.Tensor`): ``(B, C, H, W)`` pixels in the model's units ([-1, 1]).
        prediction_type (`str`): the scheduler's ``prediction_type``.
        num_probes (`int`): Rademacher probes per image (their mean estimates the divergence).
        generator (`torch.Generator`, *optional*): draws the probes (CPU generator).
        rtol (`float`), atol (`float`): `solve_ivp` tolerances.

    Returns:
        [`LogLikelihood`]

    Example:

    ```py
    >>> from diffusers_side.pipelines.loading import load_pipeline
    >>> pipe = load_pipeline("digits-rare")
    >>> x = torch.rand(4, 1, 16, 16) * 2 - 1
    >>> ode_log_likelihood(pipe.unet, pipe.scheduler.alphas_cumprod, x).bits_per_dim
    ```
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"Unsupported prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}.")
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (B, C, H, W) tensor, got shape {tuple(images.shape)}.")
    if num_probes < 1:
        raise ValueError(f"num_probes must be at least 1, got {num_probes}.")
    levels = NoiseLevels(alphas_cumprod)
    shape = tuple(images.shape)
    probes = torch.randint(0, 2, (num_probes, *shape), generator=generator).float() * 2 - 1
    flow = _ProbabilityFlow(unet, levels, prediction_type, shape, probes.to(model_device(unet)))
    start = np.concatenate([images.detach().cpu().double().numpy().ravel(), np.zeros(shape[0])])
    span = (float(levels.log_sigmas[0]), float(levels.log_sigmas[-1]))
    solution = solve_ivp(flow, span, start, method="RK45", rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"The probability-flow ODE solver failed: {solution.message}")
    end = solution.y[:, -1]
    y_end, integral = end[: -shape[0]].reshape(shape[0], -1), end[-shape[0] :]
    log_px = prior_log_density(y_end, levels.sigma_max) + integral
    dim = y_end.shape[1]
    return LogLikelihood(log_px, -log_px / (dim * math.log(2)), flow.evals, levels.sigma_min, levels.sigma_max)
