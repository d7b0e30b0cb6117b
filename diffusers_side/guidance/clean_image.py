"""Classifier guidance on the predicted clean image x0_hat (``guidance_space="x0"``; not in the SIDE paper).

Universal / DPS-style guidance: the classifier reads x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t),
clamped to [-1, 1], at timestep 0, and the gradient is back-propagated through the UNet to x_t.
"""

from __future__ import annotations

import torch

from .classifier import ClassifierGuide
from .noise import alpha_bar, check_finite_gradient, predicted_noise, root_mean_square, shift_noise_prediction


class CleanImageGuide(ClassifierGuide):
    """
    Classifier guidance on x0_hat, the step normalised by the noise prediction's own size.

    The implied noise becomes, per image,

        eps_guided = eps_theta(x_t, t) - lambda * RMS(eps_theta) * g / RMS(g),
        g = grad_{x_t} log p_phi(c | x0_hat(x_t), t=0)   (see `clean_image_gradient`),

    RMS over the pixels of one image. The raw g grows like 1 / sqrt(abar_t) at high noise (the chain rule
    through x0_hat) and its size depends on the classifier's calibration, so lambda is instead the fraction of
    the noise prediction's RMS by which guidance moves it, at every t and for every model (lambda = 0.1: a 10 %
    change of eps at each guided step; useful scales are 0.02-0.2). An image whose g is zero is left unguided.
    One extra UNet backward per guided step: the UNet is frozen (gradients reach x_t, never its weights).

    Args:
        classifier ([`TimeDependentClassifier`]): evaluated at t = 0 (a time-independent one ignores t).
        window ([`GuidanceWindow`] or `tuple`, *optional*): guide only at timesteps in ``[t_min, t_max]``.
    """

    runs_unet = True

    def frozen_modules(self, pipe) -> list[torch.nn.Module]:
        return [self.classifier, pipe.unet]

    def guided_output(self, pipe, model_input, timestep, step_index, model_output, targets, scale):
        abar = alpha_bar(pipe.scheduler, step_index, timestep)
        model_output, gradient = self.clean_image_gradient(pipe, model_input, timestep, abar, targets)
        check_finite_gradient(gradient, step_index, timestep)
        eps = predicted_noise(pipe.scheduler, model_output, model_input, abar)
        eps_shift = -scale * root_mean_square(eps) * gradient / root_mean_square(gradient).clamp_min(
            torch.finfo(gradient.dtype).tiny
        )
        return shift_noise_prediction(pipe.scheduler, model_output, model_input, abar, eps_shift.to(model_output.dtype))

    def clean_image_gradient(
        self, pipe, model_input: torch.Tensor, timestep: torch.Tensor, abar: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's output at x_t and g = grad_{x_t} log p_phi(c | x0_hat(x_t), t=0), back-propagated through the UNet.

        x0_hat is clamped to [-1, 1] as a scheduler with `clip_sample=True` clamps its x_0 prediction, so the
        classifier sees an image in its training range (pixels predicted outside it pass no gradient).

        Returns:
            `tuple`: the UNet's output (detached), which the step then guides, and g.
        """
        alpha_t, sigma_t = (value.to(model_input.dtype) for value in (abar.sqrt(), (1 - abar).sqrt()))
        with torch.enable_grad():
            x_t = model_input.detach().requires_grad_(True)
            model_output = pipe.unet(x_t, timestep).sample
            clean = ((x_t - sigma_t * predicted_noise(pipe.scheduler, model_output, x_t, abar)) / alpha_t).clamp(-1, 1)
            clean_timestep = torch.zeros(x_t.shape[0], device=x_t.device, dtype=torch.long)
            log_probs = self.classifier(clean.to(self.classifier.dtype), clean_timestep).log_softmax(dim=-1)
            selected = log_probs[torch.arange(x_t.shape[0], device=x_t.device), targets].sum()
            (gradient,) = torch.autograd.grad(selected, x_t)
        return model_output.detach(), gradient
