"""`SIDEPipeline`: unconditional diffusion sampling guided toward one surrogate condition at a time.

`model_index.json` records the pipeline as ``["diffusers_side", "SIDEPipeline"]``: the top-level package must keep
exporting it.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import snapshot_download

from ..guidance.exemplar import ExemplarPosterior
from ..models.classifier import TimeDependentClassifier
from ..storage.embedded import EMBEDDED_CHOICES

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")
DDIM_DEFAULT_STEPS = 50  # DDIMPipeline's default; DDPM schedulers default to their full chain like DDPMPipeline
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# Where the classifier reads the sample: the noisy x_t (the paper) or the predicted clean image x0_hat.
GUIDANCE_SPACES = ("xt", "x0")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_side import SIDEPipeline

        >>> pipe = SIDEPipeline.from_pretrained("path/or/user-repo")  # unet + scheduler + classifier
        >>> generator = torch.Generator().manual_seed(0)
        >>> out = pipe(batch_size=4, target=[0, 0, 1, 1], guidance_scale=2.0, generator=generator)
        >>> out.images[0].save("extracted.png"), out.targets
        ```
"""


@dataclass
class SIDEPipelineOutput(BaseOutput):
    """
    Output of [`SIDEPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            The generated images, in the format asked for by `output_type`.
        targets (`torch.Tensor` or `None`):
            The surrogate condition each image was guided toward, shape `(batch_size,)`; `None` for
            unguided sampling.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    targets: torch.Tensor | None


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


class SIDEPipeline(DiffusionPipeline):
    r"""
    Sampling from an unconditional diffusion model with time-dependent classifier guidance (SIDE).

    Every denoising step replaces the model's noise prediction by

        eps_guided = eps_theta(x_t, t) - sqrt(1 - abar_t) * guidance_scale * grad_x log p_phi(c | x_t, t)

    (the "condition score" form of Dhariwal & Nichol, 2021), so any scheduler can take the step. With
    `guidance_scale=0` or no classifier the pipeline is exactly `DDPMPipeline` / `DDIMPipeline`.

    `guidance_space="x0"` (not in the SIDE paper; universal / DPS-style guidance) instead classifies the
    predicted clean image x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t), clamped to [-1, 1],
    at timestep 0, takes g = grad_{x_t} log p_phi(c | x0_hat) through the UNet, and moves eps by a fixed
    fraction lambda of its own RMS: eps_guided = eps - lambda * RMS(eps) * g / RMS(g), per image (see `guide_x0`).

    Swapping it in for `DDPMPipeline` or `DDIMPipeline` keeps their calls working: the same arguments with
    the same defaults (`num_inference_steps` follows the scheduler, see `__call__`), `return_dict=False`
    returns `(images,)`, and `components` lists `classifier` only when there is one, so
    `DDIMPipeline(**pipe.components)` works on an unguided pipeline. Deliberate differences:

    - `from_pretrained` loads safetensors only unless `use_safetensors=False` is passed (unpickling can run
      code, and an audited checkpoint is untrusted input).
    - Without a classifier, a positive `guidance_scale` or a `target` is an error rather than ignored: the
      unguided pipelines refuse these arguments too, and sampling unguided while guidance was asked for
      would record a plain run as a SIDE one.
    - Arguments after `generator` are keyword-only: `DDPMPipeline` and `DDIMPipeline` disagree on the
      third positional argument.

    Args:
        unet ([`UNet2DModel`]): the unconditional model under audit (epsilon, v or sample prediction).
        scheduler ([`SchedulerMixin`]): any diffusers scheduler (DDPM, DDIM, Euler, Euler ancestral,
            DPMSolverMultistep, UniPC, ...).
        classifier ([`TimeDependentClassifier`], *optional*): p_phi(y | x_t, t) over the surrogate conditions.
    """

    model_cpu_offload_seq = "unet"
    _optional_components = ["classifier"]
    # The classifier is small and runs at every step next to the UNet: keep it on the device.
    _exclude_from_cpu_offload = ["classifier"]
    _callback_tensor_inputs = ["image"]

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, classifier: TimeDependentClassifier | None = None):
        super().__init__()
        if classifier is not None:
            check_classifier_matches_unet(classifier, unet)
        self.register_modules(unet=unet, scheduler=scheduler, classifier=classifier)

    @property
    def components(self) -> dict[str, Any]:
        """The modules this pipeline holds: `unet`, `scheduler` and, when there is one, `classifier`.

        Unlike `DiffusionPipeline.components`, a missing classifier is left out rather than listed as `None`,
        so that `DDPMPipeline(**pipe.components)` and `DDIMPipeline(**pipe.components)` work on an unguided
        pipeline; `SIDEPipeline(**pipe.components)` works either way.
        """
        components = super().components
        if components.get("classifier") is None:
            components.pop("classifier", None)
        return components

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "SIDEPipeline":
        """
        Load a pipeline from a local folder or a Hub repo id, safetensors only unless you opt in.

        A repo id is first resolved to a local snapshot with `huggingface_hub.snapshot_download` (honouring
        `HF_HUB_CACHE` and `HF_HUB_OFFLINE`): diffusers' own download path refuses third-party components
        such as the classifier unless remote code is trusted, which a plugin-pushed repo must not need.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): folder or Hub repo id.
            use_safetensors (`bool`, *optional*, defaults to `True`): pass `False` to allow pickled
                `.bin` weights (only for checkpoints you trust: unpickling can run code).
            revision, cache_dir, token, local_files_only: forwarded to `snapshot_download`.
            kwargs: forwarded to `DiffusionPipeline.from_pretrained` (e.g. `torch_dtype`).
        """
        source = str(pretrained_model_name_or_path)
        if not os.path.isdir(source):
            if os.path.isabs(source) or source.startswith(".") or os.path.exists(source):
                raise FileNotFoundError(
                    f"Pipeline folder {source!r} does not exist (or is not a folder); pass a folder written by "
                    "`save_pretrained` or a Hub repo id such as 'user/repo'."
                )
            try:
                source = snapshot_download(
                    source,
                    revision=kwargs.pop("revision", None),
                    cache_dir=kwargs.get("cache_dir"),
                    token=kwargs.pop("token", None),
                    local_files_only=kwargs.get("local_files_only", False),
                )
            except (OSError, ValueError) as error:
                raise FileNotFoundError(
                    f"{source!r} is not a local folder, and fetching it as a Hub repo id failed ({error}). Check the path, "
                    "or the repo id and your connection."
                ) from error
        if not os.path.isfile(os.path.join(source, "model_index.json")):
            raise FileNotFoundError(
                f"{str(pretrained_model_name_or_path)!r} is not a pipeline folder (it has no model_index.json); pass a folder "
                f"written by `save_pretrained` or `side train-classifier`, or an embedded model ({EMBEDDED_CHOICES})."
            )
        use_safetensors = kwargs.pop("use_safetensors", True)
        try:
            return super().from_pretrained(source, use_safetensors=use_safetensors, **kwargs)
        except (OSError, EnvironmentError) as error:
            unreadable = "Unable to load weights from checkpoint file" in str(error)
            if unreadable:
                raise OSError(
                    f"A weights file of {str(pretrained_model_name_or_path)!r} is corrupt or truncated ({error.args[0].strip()}): "
                    "download or save the pipeline again."
                ) from error
            if use_safetensors and "safetensors" in str(error):
                raise OSError(
                    f"{pretrained_model_name_or_path!r} has no safetensors weights, and pickled weights are refused by "
                    "default because unpickling can run arbitrary code. If you trust this checkpoint, load it with "
                    "`SIDEPipeline.from_pretrained(..., use_safetensors=False)` (CLI: --allow-pickle), then re-save it "
                    "with `save_pretrained` to convert it to safetensors."
                ) from error
            raise

    def check_inputs(
        self,
        batch_size: int,
        target: int | list[int] | torch.Tensor | None,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        use_clipped_model_output: bool | None = None,
        exemplars: ExemplarPosterior | None = None,
        guidance_window: tuple[float, float] | None = None,
        guidance_space: str = "xt",
    ) -> None:
        """Raise `ValueError` on arguments that cannot be sampled (naming the argument and the fix)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; use one of {OUTPUT_TYPES}.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"Got a list of {len(generator)} generators for batch_size={batch_size}; pass one generator per image."
            )
        if use_clipped_model_output is not None and "use_clipped_model_output" not in self.scheduler_step_arguments():
            raise ValueError(
                f"use_clipped_model_output={use_clipped_model_output!r} is an option of DDIMScheduler.step, which "
                f"{type(self.scheduler).__name__}.step does not take; leave it None with this scheduler."
            )
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale={guidance_scale} must be finite and >= 0; use 0 for unguided sampling or a positive scale.")
        if guidance_window is not None and (len(guidance_window) != 2 or not guidance_window[0] <= guidance_window[1]):
            raise ValueError(f"guidance_window={guidance_window!r} must be (t_min, t_max) with t_min <= t_max.")
        if guidance_space not in GUIDANCE_SPACES:
            raise ValueError(
                f"guidance_space={guidance_space!r} is not one of {GUIDANCE_SPACES}; use 'xt' (the paper: the classifier "
                "reads the noisy x_t) or 'x0' (it reads the predicted clean image)."
            )
        if guidance_space == "x0" and exemplars is not None:
            raise ValueError(
                "guidance_space='x0' guides with a classifier and cannot be combined with exemplars: the exemplar "
                "posterior p(c | x_t) is already exact at every noise level, and at t = 0 it is a hard "
                "nearest-exemplar assignment whose gradient vanishes. Drop exemplars=, or use guidance_space='xt'."
            )
        if exemplars is not None:
            sample_shape = (self.unet.config.in_channels, *_sample_hw(self.unet.config.sample_size))
            if exemplars.image_shape != sample_shape:
                raise ValueError(
                    f"The exemplars are {exemplars.image_shape} images but the UNet samples {sample_shape}; label a "
                    "synthetic set sampled from this UNet."
                )
        elif self.classifier is None:
            if guidance_scale > 0 or target is not None:
                raise ValueError(
                    f"guidance_scale={guidance_scale}, target={target!r} need a classifier, but this pipeline has none; "
                    "build it with `SIDEPipeline(unet, scheduler, classifier=...)`, pass `exemplars=`, or set "
                    "guidance_scale=0 and target=None."
                )
            return
        else:
            check_classifier_matches_unet(self.classifier, self.unet)
        prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if guidance_scale > 0 and prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"Classifier guidance supports prediction_type in {PREDICTION_TYPES}, not {prediction_type!r}."
            )
        if target is not None:
            targets = torch.as_tensor(target).reshape(-1)
            num_classes = self.num_conditions(exemplars)
            if targets.numel() not in (1, batch_size):
                raise ValueError(f"Got {targets.numel()} targets for batch_size={batch_size}; pass one int or one per image.")
            if targets.is_floating_point() or targets.min() < 0 or targets.max() >= num_classes:
                raise ValueError(
                    f"target={target!r} is out of range: there are {num_classes} surrogate conditions "
                    f"(valid targets are 0..{num_classes - 1})."
                )

    def num_conditions(self, exemplars: ExemplarPosterior | None = None) -> int:
        """K', the number of surrogate conditions of the guide (the exemplar set's, else the classifier's)."""
        return exemplars.num_classes if exemplars is not None else self.classifier.config.num_classes

    def prepare_targets(
        self,
        target,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
        exemplars: ExemplarPosterior | None = None,
    ) -> torch.Tensor:
        """Fixed targets, or one condition drawn uniformly per image from the generator(s)."""
        if target is not None:
            return torch.as_tensor(target, dtype=torch.long).reshape(-1).expand(batch_size).to(device)
        num_classes = self.num_conditions(exemplars)
        if isinstance(generator, list):
            draws = [torch.randint(num_classes, (1,), generator=g, device=g.device) for g in generator]
            return torch.cat([d.to(device) for d in draws])
        generator_device = generator.device if generator is not None else "cpu"
        return torch.randint(num_classes, (batch_size,), generator=generator, device=generator_device).to(device)

    def alpha_bar(self, step_index: int, timestep: torch.Tensor) -> torch.Tensor:
        """abar_t of the current step: 1 / (1 + sigma^2) for sigma-parameterised schedulers, else alphas_cumprod[t]."""
        sigmas = getattr(self.scheduler, "sigmas", None)
        if sigmas is not None and len(sigmas) > step_index:
            return 1.0 / (1.0 + sigmas[step_index].double() ** 2)
        return self.scheduler.alphas_cumprod[int(timestep)].double()

    def classifier_gradient(self, model_input: torch.Tensor, timestep: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """g = grad_x log p_phi(c | x_t, t), taken w.r.t. the noisy images only (the classifier is frozen)."""
        with torch.enable_grad():
            x_t = model_input.detach().to(self.classifier.dtype).requires_grad_(True)
            log_probs = self.classifier(x_t, timestep.expand(x_t.shape[0])).log_softmax(dim=-1)
            selected = log_probs[torch.arange(x_t.shape[0], device=x_t.device), targets].sum()
            (gradient,) = torch.autograd.grad(selected, x_t)
        return gradient.to(model_input.dtype)

    def guide(
        self,
        model_output: torch.Tensor,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        step_index: int,
        targets: torch.Tensor,
        guidance_scale: float,
        exemplars: ExemplarPosterior | None = None,
    ) -> torch.Tensor:
        """Shift the model's prediction so that its implied noise is eps - sqrt(1 - abar_t) * lambda * g.

        g is the classifier's gradient, or the exact one of the exemplar posterior when `exemplars` is given.
        """
        abar = self.alpha_bar(step_index, timestep)
        if exemplars is not None:
            gradient = exemplars.gradient(model_input, abar, targets)
        else:
            gradient = self.classifier_gradient(model_input, timestep, targets)
        check_finite_gradient(gradient, step_index, timestep)
        eps_shift = (-(1 - abar).sqrt() * guidance_scale * gradient.double()).to(model_output.dtype)
        return self.shift_noise_prediction(model_output, model_input, abar, eps_shift)

    def shift_noise_prediction(
        self, model_output: torch.Tensor, model_input: torch.Tensor, abar: torch.Tensor, eps_shift: torch.Tensor
    ) -> torch.Tensor:
        """`model_output` changed so that the noise it implies moves by `eps_shift`, in the model's own parameterisation.

        x_t = alpha_t x_0 + sigma_t eps and v = alpha_t eps - sigma_t x_0, with alpha_t = sqrt(abar_t) and
        sigma_t = sqrt(1 - abar_t); a learned-variance UNet's extra output channels are left as they are.
        """
        alpha_t, sigma_t = abar.sqrt(), (1 - abar).sqrt()
        prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if prediction_type == "sample":
            eps_shift = eps_shift * (-sigma_t / alpha_t).to(model_output.dtype)
        elif prediction_type == "v_prediction":
            eps_shift = eps_shift / alpha_t.to(model_output.dtype)
        channels = model_input.shape[1]
        guided = model_output.clone()
        guided[:, :channels] += eps_shift
        return guided

    def predicted_noise(self, model_output: torch.Tensor, model_input: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """eps_theta(x_t, t) implied by the model's output, whatever it predicts (epsilon, v or x_0)."""
        alpha_t, sigma_t = (value.to(model_input.dtype) for value in (abar.sqrt(), (1 - abar).sqrt()))
        prediction = model_output[:, : model_input.shape[1]]
        prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if prediction_type == "sample":
            return (model_input - alpha_t * prediction) / sigma_t
        if prediction_type == "v_prediction":
            return alpha_t * prediction + sigma_t * model_input
        return prediction

    def clean_image_gradient(
        self, model_input: torch.Tensor, timestep: torch.Tensor, abar: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's output at x_t and g = grad_{x_t} log p_phi(c | x0_hat(x_t), t=0), back-propagated through the UNet.

        x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t), clamped to [-1, 1] as a scheduler with
        `clip_sample=True` clamps its x_0 prediction, so the classifier sees an image in its training range (pixels
        predicted outside it pass no gradient). A time-dependent classifier is evaluated at t = 0, the clean images
        it was trained on; a time-independent one ignores t.

        Returns:
            `tuple`: the UNet's output (detached), which the step then guides, and g.
        """
        alpha_t, sigma_t = (value.to(model_input.dtype) for value in (abar.sqrt(), (1 - abar).sqrt()))
        with torch.enable_grad():
            x_t = model_input.detach().requires_grad_(True)
            model_output = self.unet(x_t, timestep).sample
            clean = ((x_t - sigma_t * self.predicted_noise(model_output, x_t, abar)) / alpha_t).clamp(-1, 1)
            clean_timestep = torch.zeros(x_t.shape[0], device=x_t.device, dtype=torch.long)
            log_probs = self.classifier(clean.to(self.classifier.dtype), clean_timestep).log_softmax(dim=-1)
            selected = log_probs[torch.arange(x_t.shape[0], device=x_t.device), targets].sum()
            (gradient,) = torch.autograd.grad(selected, x_t)
        return model_output.detach(), gradient

    def guide_x0(
        self,
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        step_index: int,
        targets: torch.Tensor,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Run the UNet at x_t and return its output guided on the predicted clean image (`guidance_space="x0"`).

        The implied noise becomes, per image,

            eps_guided = eps_theta(x_t, t) - lambda * RMS(eps_theta) * g / RMS(g),
            g = grad_{x_t} log p_phi(c | x0_hat(x_t), t=0)   (see `clean_image_gradient`),

        RMS over the pixels of one image. This is a per-step normalisation: the raw g grows like
        1 / sqrt(abar_t) at high noise (the chain rule through x0_hat), and its size depends on the classifier's
        calibration, so lambda is instead the fraction of the noise prediction's RMS by which guidance moves it,
        at every t and for every model (lambda = 0.1: a 10 % change of eps at each guided step). The paper's
        x_t form, eps - sqrt(1 - abar_t) * lambda * grad log p_phi(c | x_t, t), has no such normalisation: there
        lambda scales the classifier's score. An image whose g is zero is left unguided.
        """
        abar = self.alpha_bar(step_index, timestep)
        model_output, gradient = self.clean_image_gradient(model_input, timestep, abar, targets)
        check_finite_gradient(gradient, step_index, timestep)
        eps = self.predicted_noise(model_output, model_input, abar)
        eps_shift = -guidance_scale * root_mean_square(eps) * gradient / root_mean_square(gradient).clamp_min(
            torch.finfo(gradient.dtype).tiny
        )
        return self.shift_noise_prediction(model_output, model_input, abar, eps_shift.to(model_output.dtype))

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        *,
        target: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        eta: float = 0.0,
        use_clipped_model_output: bool | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["SIDEPipeline", int, torch.Tensor, dict], dict] | None = None,
        exemplars: ExemplarPosterior | None = None,
        guidance_window: tuple[float, float] | None = None,
        guidance_space: str = "xt",
    ) -> SIDEPipelineOutput | tuple:
        r"""
        Generate images, guided toward surrogate conditions when a classifier and a positive scale are given.

        Args:
            batch_size (`int`, defaults to 1): number of images.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): one generator, or one per image
                (so each image can be regenerated from its own seed).
            target (`int`, `list[int]` or `torch.Tensor`, *optional*): the surrogate condition(s) to guide toward,
                one for all images or one per image. `None` draws one uniformly at random per image from `generator`
                (only when guidance is on, so unguided sampling consumes exactly the random numbers
                `DDPMPipeline` does).
            guidance_scale (`float`, *optional*): lambda. Defaults to 1.0 when the pipeline has a classifier (the
                Bayes-exact conditional score of p(x | c); unlike classifier-free guidance, 1.0 is not "off"), 0
                otherwise. 0 reproduces unconditional sampling exactly. Without a classifier only 0 is accepted.
            num_inference_steps (`int`, *optional*): denoising steps. Defaults to what the unguided pipeline for
                this scheduler uses: the full training chain (`num_train_timesteps`, 1000 for a standard DDPM)
                with a `DDPMScheduler`, as `DDPMPipeline` does, and 50 with any other scheduler, as
                `DDIMPipeline` does.
            eta (`float`, defaults to 0.0): DDIM's eta; ignored by schedulers that do not take it.
            use_clipped_model_output (`bool`, *optional*): forwarded to `DDIMScheduler.step` as `DDIMPipeline`
                does; `None` passes nothing (required for schedulers whose `step` does not take it).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, defaults to `True`): return a [`SIDEPipelineOutput`] instead of the tuple
                `(images,)` that diffusers' pipelines return. The targets are only in the `SIDEPipelineOutput`:
                use the default `return_dict=True` (or pass `target`) to know them.
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipe, i, t, {"image": x_t})` after
                every step; it may return `{"image": replacement}`.
            exemplars ([`~diffusers_side.guidance.exemplar.ExemplarPosterior`], *optional*): guide with the exact posterior
                of this labelled synthetic set instead of the classifier (exemplar guidance; not in the SIDE paper).
            guidance_window (`tuple[float, float]`, *optional*): guide only at the steps whose timestep t lies in
                `[t_min, t_max]`; `None` guides at every step (the paper).
            guidance_space (`str`, defaults to `"xt"`): where the classifier reads the sample. `"xt"` (the paper):
                p_phi(c | x_t, t) on the noisy sample, eps - sqrt(1 - abar_t) * lambda * g. `"x0"` (not in the SIDE
                paper): p_phi(c | x0_hat) on the predicted clean image at t = 0, the gradient back-propagated
                through the UNet (one extra UNet backward per guided step), and eps moved by lambda times its own
                RMS (see `guide_x0`), so useful scales are fractions such as 0.02-0.2. Needs a classifier (not
                `exemplars`).

        Examples:

        Returns:
            [`SIDEPipelineOutput`] or `tuple`: images and targets (`targets` is `None` without guidance), or
            `(images,)` when `return_dict=False`.
        """
        if guidance_scale is None:
            guidance_scale = 1.0 if self.classifier is not None or exemplars is not None else 0.0
        if num_inference_steps is None:
            num_inference_steps = self.default_num_inference_steps()
        self.check_inputs(
            batch_size, target, guidance_scale, generator, output_type, use_clipped_model_output, exemplars,
            guidance_window, guidance_space,
        )
        device = self._execution_device
        guided = guidance_scale > 0
        targets = None
        if guided or target is not None:
            targets = self.prepare_targets(target, batch_size, generator, device, exemplars)
        window = guidance_window or (-math.inf, math.inf)

        size = self.unet.config.sample_size
        shape = (batch_size, self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        image = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        image = image * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps)
        step_kwargs = self.prepare_step_kwargs(generator, eta, use_clipped_model_output)

        on_clean_image = guided and guidance_space == "x0"
        with contextlib.ExitStack() as stack:
            if guided and exemplars is None:
                stack.enter_context(frozen(self.classifier))
            if on_clean_image:  # gradients flow through the UNet to x_t, never into its weights
                stack.enter_context(frozen(self.unet))
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                model_input = self.scheduler.scale_model_input(image, t)
                guide_now = guided and window[0] <= float(t) <= window[1]
                if guide_now and on_clean_image:
                    model_output = self.guide_x0(model_input, t, i, targets, guidance_scale)
                else:
                    model_output = self.unet(model_input, t).sample
                    if guide_now:
                        model_output = self.guide(model_output, model_input, t, i, targets, guidance_scale, exemplars)
                image = self.scheduler.step(model_output, t, image, **step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    image = callback_on_step_end(self, i, t, {"image": image}).get("image", image)

        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()  # float(): numpy has no bfloat16
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return SIDEPipelineOutput(images=image, targets=targets)

    def default_num_inference_steps(self) -> int:
        """`DDPMPipeline`'s default (the whole chain) with a `DDPMScheduler`, `DDIMPipeline`'s 50 otherwise."""
        if isinstance(self.scheduler, DDPMScheduler):
            return self.scheduler.config.num_train_timesteps
        return DDIM_DEFAULT_STEPS

    def scheduler_step_arguments(self) -> set[str]:
        """The names of the arguments this scheduler's `step` takes."""
        return set(inspect.signature(self.scheduler.step).parameters)

    def prepare_step_kwargs(self, generator, eta: float, use_clipped_model_output: bool | None = None) -> dict:
        """The optional arguments this scheduler's `step` accepts (`generator`, DDIM's `eta` and clipping flag)."""
        accepted = self.scheduler_step_arguments()
        kwargs = {}
        if "generator" in accepted:
            kwargs["generator"] = generator
        if "eta" in accepted:
            kwargs["eta"] = eta
        if use_clipped_model_output is not None:
            kwargs["use_clipped_model_output"] = use_clipped_model_output
        return kwargs


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


def _sample_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def check_classifier_matches_unet(classifier: TimeDependentClassifier, unet: UNet2DModel) -> None:
    """Raise if the classifier cannot read the UNet's samples (channels or resolution differ)."""
    if not isinstance(classifier, TimeDependentClassifier):
        raise TypeError(f"classifier must be a TimeDependentClassifier, got {type(classifier).__name__}.")
    unet_size, classifier_size = unet.config.sample_size, classifier.config.sample_size
    if unet.config.in_channels != classifier.config.in_channels or unet_size != classifier_size:
        raise ValueError(
            f"The classifier expects {classifier.config.in_channels}x{classifier_size}x{classifier_size} images but the "
            f"UNet samples {unet.config.in_channels}x{unet_size}x{unet_size}; train the classifier at the UNet's "
            "resolution and channels (training/train_classifier.py reads them from the pipeline)."
        )
