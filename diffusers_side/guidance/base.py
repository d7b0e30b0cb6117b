"""The guide interface: what `SIDEPipeline` asks of a guidance strategy at every guided step.

A guide turns the UNet's output at x_t into a guided output, in the UNet's own parameterisation, so that
any diffusers scheduler can take the step. It knows how many surrogate conditions it steers toward, checks
that it can read the pipeline's samples before any work, and lists the modules that must stay frozen while
it differentiates through them. When it guides is the business of its [`GuidanceWindow`] (None: at every
step, the paper). Targets are drawn outside it (see `diffusers_side.guidance.targets.TargetSampler`).

Adding a variant is one new subclass (one file) plus its `register_guide` line in
`diffusers_side.guidance.registry`.

Example:

```py
>>> import torch
>>> from diffusers_side.guidance.base import ScoreGuide
>>> class Brighter(ScoreGuide):  # grad log p(c | x_t) = +1 everywhere: every condition wants brighter pixels
...     num_conditions = 2
...     def log_prob_gradient(self, pipe, x_t, timestep, alpha_bar, targets):
...         return torch.ones_like(x_t)
>>> images = pipe(batch_size=2, guide=Brighter(window=(0, 500)), guidance_scale=2.0).images  # doctest: +SKIP
```
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch

from .noise import PREDICTION_TYPES, alpha_bar, check_finite_gradient, shift_noise_prediction
from .schedule import GuidanceWindow

if TYPE_CHECKING:
    from ..pipelines.pipeline_side import SIDEPipeline


class Guide(ABC):
    """
    A guidance strategy: the guided model output at one denoising step.

    Args:
        window ([`GuidanceWindow`], `tuple[float, float]` or `None`): guide only at the timesteps in
            ``[t_min, t_max]``; `None` guides at every step.

    Subclasses set ``runs_unet = True`` when they differentiate through the UNet: the pipeline then passes
    ``model_output=None`` and the guide runs ``pipe.unet`` itself.
    """

    runs_unet: ClassVar[bool] = False

    def __init__(self, window: GuidanceWindow | tuple[float, float] | None = None):
        self.window = GuidanceWindow.coerce(window)

    @property
    @abstractmethod
    def num_conditions(self) -> int:
        """K', the number of surrogate conditions this guide can steer toward (valid targets are 0..K'-1)."""

    def check(self, pipe: SIDEPipeline, sample_shape: tuple[int, ...], num_inference_steps: int | None = None) -> None:
        """Raise `ValueError` when this guide cannot steer ``pipe``'s samples of shape ``(C, H, W)``.

        With ``num_inference_steps``, also refuse a window that holds none of the sampling timesteps (guidance
        would be silently off). Subclasses extend it (``super().check(...)``) with what they read.
        """
        prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"Classifier guidance supports prediction_type in {PREDICTION_TYPES}, not {prediction_type!r}.")
        if self.window is not None and num_inference_steps is not None:
            self.window.check_fires(pipe.scheduler, num_inference_steps)

    def active(self, timestep: torch.Tensor | float) -> bool:
        """Whether to guide at ``timestep`` (inside the window, or always without one)."""
        return self.window is None or self.window.contains(timestep)

    def frozen_modules(self, pipe: SIDEPipeline) -> list[torch.nn.Module]:
        """Modules kept in eval mode without parameter gradients while sampling (gradients reach x_t only)."""
        return []

    @abstractmethod
    def guided_output(
        self,
        pipe: SIDEPipeline,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        step_index: int,
        model_output: torch.Tensor | None,
        targets: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """
        The guided model output at this step.

        Args:
            pipe ([`SIDEPipeline`]): the pipeline (its scheduler gives abar_t; its UNet for ``runs_unet`` guides).
            model_input (`torch.Tensor`): x_t, as scaled by ``scheduler.scale_model_input``.
            timestep (`torch.Tensor`): t.
            step_index (`int`): the index of t in ``scheduler.timesteps``.
            model_output (`torch.Tensor` or `None`): the UNet's output at x_t (`None` for ``runs_unet`` guides).
            targets (`torch.Tensor`): one surrogate condition per image.
            scale (`float`): lambda.

        Returns:
            `torch.Tensor`: the output the scheduler steps with, in the UNet's parameterisation.
        """


class ScoreGuide(Guide):
    """Guidance in the condition-score form of Dhariwal & Nichol (2021), the SIDE paper's:

        eps_guided = eps_theta(x_t, t) - sqrt(1 - abar_t) * lambda * grad_x log p(c | x_t),

    written back into the model's own parameterisation (epsilon, v or sample). Subclasses give the gradient.
    """

    @abstractmethod
    def log_prob_gradient(
        self, pipe: SIDEPipeline, x_t: torch.Tensor, timestep: torch.Tensor, alpha_bar: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """g = grad_x log p(c | x_t) for each image (same shape as ``x_t``)."""

    def guided_output(self, pipe, model_input, timestep, step_index, model_output, targets, scale):
        abar = alpha_bar(pipe.scheduler, step_index, timestep)
        gradient = self.log_prob_gradient(pipe, model_input, timestep, abar, targets)
        check_finite_gradient(gradient, step_index, timestep)
        eps_shift = (-(1 - abar).sqrt() * scale * gradient.double()).to(model_output.dtype)
        return shift_noise_prediction(pipe.scheduler, model_output, model_input, abar, eps_shift)


@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """Put `model` in eval mode with no parameter gradients, and restore its state afterwards."""
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        model.train(was_training)
        for parameter, flag in zip(model.parameters(), requires_grad):
            parameter.requires_grad_(flag)
