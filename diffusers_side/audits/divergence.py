"""The memorization divergence of the SIDE paper (Sec. 4.1, Def. 1), estimated for a diffusers model.

    M(D; p_theta, eps) = KL(q_eps || p_theta) = E_{x ~ q_eps}[log q_eps(x) - log p_theta(x)],
    q_eps(x) = (1/N) sum_i N(x | x_i, eps^2 I)   over the N images x_i of D.

Smaller M = p_theta closer to the eps-smoothed training set = more memorization. log q_eps is exact (a
log-sum-exp over the mixture); log p_theta comes from the probability-flow ODE ([`ode_log_likelihood`]).
The expectation is a Monte Carlo mean over x = x_i + eps * z, z ~ N(0, I), with the images x_i taken in
a random order, each equally often (stratified; the 95 % interval treats the draws as independent, which
is conservative for stratified draws). With ``holdout_images`` the same number is computed for a q built
from as many holdout images (a seeded subset when there are more), and the gap M_holdout - M_train (with
its interval) says how much closer the model is to its training images than to unseen ones of the same
distribution: a larger gap = more memorization.

Default eps: sigma_min = sqrt((1 - abar_0) / abar_0), the model's own finest noise level (0.01 for the
linear DDPM schedule). p_theta is the model's density of clean pixels plus N(0, sigma_min^2 I), so a model
that reproduces its training set exactly at its finest scale has p_theta = q_{sigma_min} and M = 0 there.
The rule reads the scheduler only: no data, no scores. The result records eps * sqrt(2 D) over the
reference's median nearest-neighbour distance (below 1: the mixture's components do not overlap) and a
warning is logged when it is not.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from diffusers.utils import logging
from tqdm.auto import tqdm

from .likelihood import DEFAULT_ATOL, DEFAULT_RTOL, PREDICTION_TYPES, NoiseLevels, ode_log_likelihood

logger = logging.get_logger(__name__)

Z_95 = 1.959963984540054  # standard normal quantile for a two-sided 95 % interval


@dataclass
class DivergenceEstimate:
    """
    M on one image set, in nats (pixels in [-1, 1]; KL does not depend on the pixel scale).

    Args:
        value (`float`): the Monte Carlo mean of log q_eps(x) - log p_theta(x).
        ci_low (`float`), ci_high (`float`): its 95 % normal interval.
        std_error (`float`): its standard error.
        bits_per_dim (`float`): value / (D ln 2).
        mean_log_q (`float`), mean_log_p (`float`): the means of the two terms.
        num_samples (`int`): Monte Carlo draws.
        num_images (`int`): mixture components (images in q_eps).
    """

    value: float
    ci_low: float
    ci_high: float
    std_error: float
    bits_per_dim: float
    mean_log_q: float
    mean_log_p: float
    num_samples: int
    num_images: int


@dataclass
class MemorizationDivergence:
    """
    The output of [`memorization_divergence`].

    Args:
        train ([`DivergenceEstimate`]): M(D; p_theta, eps) on the reference (training) images.
        holdout ([`DivergenceEstimate`] or `None`): the same on the holdout images.
        gap (`float` or `None`): holdout.value - train.value (larger = more memorization).
        gap_ci (`tuple` or `None`): its 95 % normal interval (independent draws).
        eps (`float`): the mixture's standard deviation, pixels in [-1, 1] (halve it for [0, 1]).
        eps_rule (`str`): how eps was chosen.
        dim (`int`): D = C * H * W.
        sigma_min (`float`): the noise level p_theta is the density at.
        median_nn_distance (`float`): median L2 distance of a reference image to its nearest other one.
        overlap_ratio (`float`): eps * sqrt(2 D) / median_nn_distance (below 1: components separate).
        num_function_evals (`int`): UNet evaluations of all ODE solves.
        seconds (`float`): wall time.
        seed (`int`): the seed of every random draw.
    """

    train: DivergenceEstimate
    holdout: DivergenceEstimate | None
    gap: float | None
    gap_ci: tuple[float, float] | None
    eps: float
    eps_rule: str
    dim: int
    sigma_min: float
    median_nn_distance: float
    overlap_ratio: float
    num_function_evals: int
    seconds: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """A few lines for a terminal: M on each set with its 95 % interval, the gap, and eps."""
        lines = [f"eps {self.eps:.4g} ([-1, 1] pixels; {self.eps_rule}), D = {self.dim}, seed {self.seed}"]
        for name, estimate in (("train", self.train), ("holdout", self.holdout)):
            if estimate is not None:
                lines.append(
                    f"M {name}: {estimate.value:.2f} nats ({estimate.bits_per_dim:.4f} bits/dim), 95 % CI "
                    f"[{estimate.ci_low:.2f}, {estimate.ci_high:.2f}], {estimate.num_samples} draws on {estimate.num_images} images"
                )
        if self.gap is not None:
            lines.append(f"gap M holdout - M train: {self.gap:.2f} nats, 95 % CI [{self.gap_ci[0]:.2f}, {self.gap_ci[1]:.2f}]")
        return "\n".join(lines)


def default_eps(alphas_cumprod: torch.Tensor | np.ndarray) -> float:
    """sigma_min = sqrt((1 - abar_0) / abar_0): the model's finest noise level (see the module docstring)."""
    return NoiseLevels(alphas_cumprod).sigma_min


def embedded_holdout(name: str) -> list:
    """The `load_digits` images that embedded model ``name`` was not trained on, as its training images are built."""
    from sklearn.datasets import load_digits

    from ..storage.embedded import digit_images, subset_indices

    seen = set(subset_indices(name))
    return digit_images([i for i in range(len(load_digits().images)) if i not in seen])[0]


def log_mixture_density(x: torch.Tensor, centers: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact log q_eps(x) = log (1/N) sum_i N(x | c_i, eps^2 I) for rows ``x`` (M, D), ``centers`` (N, D); float64."""
    x, centers = x.double(), centers.double()
    squared = torch.cdist(x, centers, compute_mode="donot_use_mm_for_euclid_dist").square()
    dim = x.shape[1]
    return (
        torch.logsumexp(-squared / (2 * eps**2), dim=1)
        - math.log(len(centers))
        - 0.5 * dim * math.log(2 * math.pi * eps**2)
    )


def median_nearest_neighbor_distance(images: torch.Tensor) -> float:
    """Median over images of the L2 distance to the nearest other image (rows flattened)."""
    rows = images.flatten(1).double()
    distances = torch.cdist(rows, rows)
    distances.fill_diagonal_(float("inf"))
    return float(distances.min(1).values.median())


def _unpack_model(pipe_or_unet_scheduler) -> tuple[torch.nn.Module, Any]:
    if isinstance(pipe_or_unet_scheduler, (tuple, list)) and len(pipe_or_unet_scheduler) == 2:
        unet, scheduler = pipe_or_unet_scheduler
    elif hasattr(pipe_or_unet_scheduler, "unet") and hasattr(pipe_or_unet_scheduler, "scheduler"):
        unet, scheduler = pipe_or_unet_scheduler.unet, pipe_or_unet_scheduler.scheduler
    else:
        raise ValueError(
            f"Expected a pipeline with .unet and .scheduler or a (unet, scheduler) pair, got "
            f"{type(pipe_or_unet_scheduler).__name__}."
        )
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise ValueError(
            f"The scheduler {type(scheduler).__name__} has no alphas_cumprod; pass a DDPM/DDIM-type scheduler."
        )
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"Unsupported prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}.")
    return unet, scheduler


def _as_model_pixels(images, unet, role: str) -> torch.Tensor:
    """Images as a float32 (N, C, H, W) tensor in [-1, 1]; PIL images are converted ([0, 255] -> [-1, 1])."""
    config = getattr(unet, "config", None)
    channels, size = getattr(config, "in_channels", None), getattr(config, "sample_size", None)
    if not isinstance(images, torch.Tensor):
        from ..storage.data import images_to_tensor

        images = images_to_tensor(list(images), resolution=size, channels=channels) * 2 - 1
    if images.ndim != 4:
        raise ValueError(f"{role} must be a (N, C, H, W) tensor or a list of images, got shape {tuple(images.shape)}.")
    expected = (channels, size, size) if channels is not None and size is not None else None
    if expected is not None and tuple(images.shape[1:]) != expected:
        raise ValueError(f"{role} have shape {tuple(images.shape[1:])} but the model takes {expected} (C, H, W).")
    if not torch.isfinite(images).all() or images.abs().max() > 1 + 1e-6:
        raise ValueError(f"{role} must be finite pixels in [-1, 1] (the model's units); convert [0, 1] images with x * 2 - 1.")
    if images.min() >= 0:
        logger.warning(f"{role} lie in [0, 1]; the model expects [-1, 1]. Pass x * 2 - 1 if they are [0, 1] pixels.")
    return images.float()


def _check_counts(reference: torch.Tensor, holdout: torch.Tensor | None, eps: float, num_samples: int, batch_size: int):
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number (pixels in [-1, 1]), got {eps!r}.")
    if len(reference) < 2:
        raise ValueError(f"reference_images holds {len(reference)} image(s); q_eps needs at least 2.")
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 (for the interval), got {num_samples}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if holdout is not None and len(holdout) < len(reference):
        raise ValueError(
            f"holdout_images holds {len(holdout)} images, fewer than the {len(reference)} reference images; the gap "
            "compares mixtures of equal size: pass at least as many holdout images (a seeded subset is used)."
        )
    if holdout is not None and tuple(holdout.shape[1:]) != tuple(reference.shape[1:]):
        raise ValueError(f"holdout_images have shape {tuple(holdout.shape[1:])}, reference {tuple(reference.shape[1:])}.")


def _separation(reference: torch.Tensor, eps: float) -> tuple[float, float]:
    """(median nearest-neighbour distance, eps * sqrt(2 D) over it); warns when q_eps's components overlap."""
    nn_distance = median_nearest_neighbor_distance(reference)
    overlap = eps * math.sqrt(2 * reference[0].numel()) / nn_distance if nn_distance > 0 else math.inf
    if overlap >= 1:
        logger.warning(
            f"eps {eps:.4g}: eps * sqrt(2D) = {overlap:.2f} x the median nearest-neighbour distance; q_eps blurs images together."
        )
    return nn_distance, overlap


def _draw_from_mixture(centers: torch.Tensor, eps: float, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """x = c_i + eps z with each center used equally often (a random permutation, repeated), z ~ N(0, I)."""
    repeats = math.ceil(num_samples / len(centers))
    order = torch.cat([torch.randperm(len(centers), generator=generator) for _ in range(repeats)])[:num_samples]
    noise = torch.randn((num_samples, *centers.shape[1:]), generator=generator, dtype=torch.float64)
    return centers[order].double() + eps * noise


def _summarize(log_q: np.ndarray, log_p: np.ndarray, num_images: int, dim: int) -> DivergenceEstimate:
    values = log_q - log_p
    mean, std_error = float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    return DivergenceEstimate(
        value=mean,
        ci_low=mean - Z_95 * std_error,
        ci_high=mean + Z_95 * std_error,
        std_error=std_error,
        bits_per_dim=mean / (dim * math.log(2)),
        mean_log_q=float(log_q.mean()),
        mean_log_p=float(log_p.mean()),
        num_samples=len(values),
        num_images=num_images,
    )


def _estimate_on(centers, eps, num_samples, generator, unet, scheduler, batch_size, ode_kwargs, desc):
    """M on one image set: draws from q_eps, exact log q_eps, ODE log p_theta by batches. Returns (estimate, evals)."""
    x = _draw_from_mixture(centers, eps, num_samples, generator)
    log_q = log_mixture_density(x.flatten(1), centers.flatten(1), eps).numpy()
    log_p, evals = [], 0
    for start in tqdm(range(0, num_samples, batch_size), desc=desc, leave=False):
        batch = x[start : start + batch_size].float()
        result = ode_log_likelihood(
            unet, scheduler.alphas_cumprod, batch, scheduler.config.prediction_type, generator=generator, **ode_kwargs
        )
        log_p.append(result.log_px)
        evals += result.num_function_evals
    return _summarize(log_q, np.concatenate(log_p), len(centers), x[0].numel()), evals


def memorization_divergence(
    pipe_or_unet_scheduler,
    reference_images: torch.Tensor | Sequence,
    holdout_images: torch.Tensor | Sequence | None = None,
    eps: float | None = None,
    num_samples: int = 200,
    seed: int = 0,
    batch_size: int = 50,
    num_probes: int = 1,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> MemorizationDivergence:
    """
    Estimate M(D; p_theta, eps) = KL(q_eps || p_theta) (SIDE, Def. 1) on the training images, and on holdout images.

    Args:
        pipe_or_unet_scheduler: a pipeline with ``.unet`` and ``.scheduler`` (e.g. `DDPMPipeline`) or a
            ``(unet, scheduler)`` pair; the scheduler needs ``alphas_cumprod`` and ``config.prediction_type``.
        reference_images: the training set D: a ``(N, C, H, W)`` tensor in [-1, 1] or a list of PIL images.
        holdout_images: unseen images of the same distribution (at least N; a seeded subset of N is used).
        eps (`float`, *optional*): the mixture's standard deviation in [-1, 1] pixel units; default sigma_min.
        num_samples (`int`): Monte Carlo draws per image set.
        seed (`int`): seeds the draws, the holdout subset and the Hutchinson probes.
        batch_size (`int`): images per ODE solve.
        num_probes (`int`): Rademacher probes per draw.
        rtol (`float`), atol (`float`): ODE solver tolerances.

    Returns:
        [`MemorizationDivergence`]

    Example:

    ```py
    >>> from diffusers_side.audits.divergence import embedded_holdout, memorization_divergence
    >>> from diffusers_side.pipelines.loading import load_pipeline
    >>> from diffusers_side.storage.embedded import load_training_subset
    >>> pipe = load_pipeline("digits-rare")
    >>> training = load_training_subset("digits-rare")["image"]
    >>> result = memorization_divergence(pipe, training, embedded_holdout("digits-rare"), num_samples=50)
    >>> print(result.describe())
    ```
    """
    started = time.perf_counter()
    unet, scheduler = _unpack_model(pipe_or_unet_scheduler)
    reference = _as_model_pixels(reference_images, unet, "reference_images")
    holdout = None if holdout_images is None else _as_model_pixels(holdout_images, unet, "holdout_images")
    eps_rule = "given" if eps is not None else "sigma_min of the scheduler (the model's finest noise level)"
    eps = default_eps(scheduler.alphas_cumprod) if eps is None else eps
    _check_counts(reference, holdout, eps, num_samples, batch_size)
    dim = reference[0].numel()
    nn_distance, overlap = _separation(reference, eps)
    seeds = np.random.SeedSequence(seed).generate_state(3)
    ode_kwargs = {"num_probes": num_probes, "rtol": rtol, "atol": atol}
    was_training = getattr(unet, "training", False)
    if isinstance(unet, torch.nn.Module):
        unet.eval()
    try:
        generator = torch.Generator().manual_seed(int(seeds[0]))
        train, evals = _estimate_on(reference, eps, num_samples, generator, unet, scheduler, batch_size, ode_kwargs, "M train")
        held, gap, gap_ci = None, None, None
        if holdout is not None:
            subset = torch.randperm(len(holdout), generator=torch.Generator().manual_seed(int(seeds[1])))[: len(reference)]
            generator = torch.Generator().manual_seed(int(seeds[2]))
            held, more = _estimate_on(
                holdout[subset], eps, num_samples, generator, unet, scheduler, batch_size, ode_kwargs, "M holdout"
            )
            evals += more
            gap = held.value - train.value
            half = Z_95 * math.hypot(held.std_error, train.std_error)
            gap_ci = (gap - half, gap + half)
    finally:
        if isinstance(unet, torch.nn.Module):
            unet.train(was_training)
    sigma_min = NoiseLevels(scheduler.alphas_cumprod).sigma_min
    return MemorizationDivergence(
        train, held, gap, gap_ci, float(eps), eps_rule, dim, sigma_min, nn_distance, overlap, evals,
        time.perf_counter() - started, seed,
    )
