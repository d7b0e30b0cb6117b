"""The noise parameterisation every guide works in: abar_t of a step, eps implied by a model output, and back.

x_t = alpha_t x_0 + sigma_t eps and v = alpha_t eps - sigma_t x_0, with alpha_t = sqrt(abar_t) and
sigma_t = sqrt(1 - abar_t). A guide computes a change of the implied noise eps; `shift_noise_prediction`
writes it back in the model's own parameterisation (epsilon, v or sample), so any scheduler can step.
"""

from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def alpha_bar(scheduler: SchedulerMixin, step_index: int, timestep: torch.Tensor) -> torch.Tensor:
    """abar_t of the current step (float64): 1 / (1 + sigma^2) for sigma-parameterised schedulers, else alphas_cumprod[t]."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) > step_index:
        return 1.0 / (1.0 + sigmas[step_index].double() ** 2)
    return scheduler.alphas_cumprod[int(timestep)].double()


def predicted_noise(
    scheduler: SchedulerMixin, model_output: torch.Tensor, model_input: torch.Tensor, abar: torch.Tensor
) -> torch.Tensor:
    """eps_theta(x_t, t) implied by the model's output, whatever it predicts (epsilon, v or x_0)."""
    alpha_t, sigma_t = (value.to(model_input.dtype) for value in (abar.sqrt(), (1 - abar).sqrt()))
    prediction = model_output[:, : model_input.shape[1]]
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type == "sample":
        return (model_input - alpha_t * prediction) / sigma_t
    if prediction_type == "v_prediction":
        return alpha_t * prediction + sigma_t * model_input
    return prediction


def shift_noise_prediction(
    scheduler: SchedulerMixin, model_output: torch.Tensor, model_input: torch.Tensor, abar: torch.Tensor, eps_shift: torch.Tensor
) -> torch.Tensor:
    """`model_output` changed so that the noise it implies moves by `eps_shift`, in the model's own parameterisation.

    A learned-variance UNet's extra output channels are left as they are.
    """
    alpha_t, sigma_t = abar.sqrt(), (1 - abar).sqrt()
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type == "sample":
        eps_shift = eps_shift * (-sigma_t / alpha_t).to(model_output.dtype)
    elif prediction_type == "v_prediction":
        eps_shift = eps_shift / alpha_t.to(model_output.dtype)
    channels = model_input.shape[1]
    guided = model_output.clone()
    guided[:, :channels] += eps_shift
    return guided


def root_mean_square(images: torch.Tensor) -> torch.Tensor:
    """The RMS of each image of a batch, shaped `(batch, 1, 1, 1)` to broadcast against it."""
    return images.pow(2).mean(dim=tuple(range(1, images.ndim)), keepdim=True).sqrt()


def check_finite_gradient(gradient: torch.Tensor, step_index: int, timestep: torch.Tensor) -> None:
    """Raise `ValueError` naming the step when the guidance gradient has a NaN or an infinity."""
    if not torch.isfinite(gradient).all():
        raise ValueError(
            f"The classifier gradient is not finite at step {step_index} (t={float(timestep):g}); "
            "check the classifier weights or lower guidance_scale."
        )
