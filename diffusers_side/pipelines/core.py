"""The sampling core every SIDE pipeline shares: [`SamplingMixin`].

`SIDEPipeline` (classifier or exemplar guidance), `SIDELoRAPipeline` (a label-conditional UNet) and
`SIDELoRATextPipeline` (a prompt-conditional one) differ only in how one step's model output is predicted.
Everything around it is here, once:

1. input checks: ``batch_size`` and ``num_inference_steps`` positive integers, one generator per image,
   ``output_type``, DDIM's ``use_clipped_model_output``, ``guidance_scale`` and the targets;
2. targets: fixed, or one drawn uniformly per image from the image's generator;
3. initial noise: `randn_tensor` of the UNet's sample shape, times the scheduler's ``init_noise_sigma``;
4. the arguments ``scheduler.step`` takes (``generator``, ``eta``, ``use_clipped_model_output``);
5. the denoising loop with ``callback_on_step_end``, and an optional restart (`SamplingMixin.restart`);
6. the end: decode the samples with the target's codec (`diffusers_side.models.codec`: the identity for a pixel
   model, the ``vqvae`` / ``vae`` of a latent one, as `LDMPipeline` and `StableDiffusionPipeline` decode), convert
   with `VaeImageProcessor.postprocess`, and return diffusers' way: the output dataclass, or ``(images,)`` with
   ``return_dict=False``.

A pipeline mixes it in before `DiffusionPipeline` and writes its ``__call__`` from these steps and its own
``predict(model_input, t, step_index)``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Callable

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..models.codec import PixelCodec, pixel_codec

OUTPUT_TYPES = ("pil", "np", "pt")
AUTOENCODER_COMPONENTS = ("vqvae", "vae")  # LDMPipeline's name, StableDiffusionPipeline's
# Only `postprocess` is used: denormalize [-1, 1] -> [0, 1], then numpy / PIL (its resizing options play no part).
_IMAGE_PROCESSOR = VaeImageProcessor()

Predict = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
StepCallback = Callable[..., dict]


def check_positive_integer(name: str, value) -> None:
    """Raise `ValueError` unless ``value`` is an integer >= 1 (a bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer (an int >= 1, not a bool).")


def check_guidance_scale(guidance_scale: float, hint: str) -> None:
    """Raise `ValueError` unless ``guidance_scale`` is finite and >= 0 (``hint`` says what the values mean)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
        raise ValueError(f"guidance_scale={guidance_scale!r} must be a number; {hint}.")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale={guidance_scale} must be finite and >= 0; {hint}.")


def check_targets(target, batch_size: int, num_conditions: int, what: str = "surrogate conditions", note: str = "") -> None:
    """Raise `ValueError` unless ``target`` is ``None``, one int or one per image, each in ``0 .. num_conditions - 1``."""
    if target is None:
        return
    targets = torch.as_tensor(target).reshape(-1)
    if targets.numel() not in (1, batch_size):
        raise ValueError(f"Got {targets.numel()} targets for batch_size={batch_size}; pass one int or one per image.")
    integral = not (targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool)
    if not integral or targets.min() < 0 or targets.max() >= num_conditions:
        raise ValueError(
            f"target={target!r} is out of range: there are {num_conditions} {what} (valid targets are "
            f"0..{num_conditions - 1}{note})."
        )


def restart_steps(num_inference_steps: int, strength: float) -> int:
    """The denoising steps a restart of ``strength`` re-runs: diffusers' img2img count, ``int(steps * strength)``.

    Example:

    ```py
    >>> from diffusers_side.pipelines.core import restart_steps
    >>> restart_steps(50, 0.25), restart_steps(50, 0.0), restart_steps(1000, 1.0)
    (12, 0, 1000)
    ```
    """
    return min(int(num_inference_steps * strength), num_inference_steps)


def check_restart_strength(restart_strength: float, num_inference_steps: int) -> None:
    """Raise `ValueError` unless ``restart_strength`` is 0 (no restart) or re-runs 1 to ``num_inference_steps`` steps."""
    if isinstance(restart_strength, bool) or not isinstance(restart_strength, numbers.Real) or not (
        math.isfinite(restart_strength) and 0 <= restart_strength <= 1
    ):
        raise ValueError(
            f"restart_strength={restart_strength!r} must be a number in [0, 1]: the fraction of the denoising chain re-run "
            "after re-noising the finished sample (0: no restart)."
        )
    if restart_strength > 0 and restart_steps(num_inference_steps, restart_strength) == 0:
        raise ValueError(
            f"restart_strength={restart_strength} re-runs no step of a {num_inference_steps}-step chain; use at least "
            f"{1 / num_inference_steps:g} (one step), or 0 for no restart."
        )


def draw_targets(target, batch_size: int, num_conditions: int, generator, device: torch.device) -> torch.Tensor:
    """Fixed targets (one for all images or one each), or one condition drawn uniformly per image from the generator(s).

    With one generator per image, image i's target comes from generator i alone, so an image regenerates alone.
    """
    if target is not None:
        return torch.as_tensor(target, dtype=torch.long).reshape(-1).expand(batch_size).to(device)
    if isinstance(generator, list):
        draws = [torch.randint(num_conditions, (1,), generator=g, device=g.device) for g in generator]
        return torch.cat([d.to(device) for d in draws])
    generator_device = generator.device if generator is not None else "cpu"
    return torch.randint(num_conditions, (batch_size,), generator=generator, device=generator_device).to(device)


class SamplingMixin:
    """
    What `SIDEPipeline`, `SIDELoRAPipeline` and `SIDELoRATextPipeline` share (see the module docstring).

    The pipeline has ``unet`` and ``scheduler``, and optionally an autoencoder (``vqvae`` or ``vae``) whose latents
    the UNet models. ``_callback_tensor_inputs[0]`` names the tensor ``callback_on_step_end`` sees.
    """

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample the UNet denoises (latents for a latent target)."""
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, *((size, size) if isinstance(size, int) else tuple(size)))

    @property
    def codec(self) -> PixelCodec:
        """Pixels <-> the UNet's samples: an `AutoencoderCodec` of the pipeline's ``vqvae`` / ``vae``, else the identity."""
        autoencoders = [getattr(self, name, None) for name in AUTOENCODER_COMPONENTS]
        return pixel_codec(next((a for a in autoencoders if a is not None), None))

    def scheduler_step_arguments(self) -> set[str]:
        """The names of the arguments this scheduler's `step` takes."""
        return set(inspect.signature(self.scheduler.step).parameters)

    def check_sampling_inputs(
        self,
        batch_size: int,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        use_clipped_model_output: bool | None = None,
    ) -> None:
        """Raise `ValueError` on sampling arguments every pipeline refuses, naming the argument and the fix."""
        check_positive_integer("batch_size", batch_size)
        check_positive_integer("num_inference_steps", num_inference_steps)
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

    def prepare_step_kwargs(self, generator, eta: float, use_clipped_model_output: bool | None = None) -> dict:
        """The optional arguments this scheduler's `step` accepts (`generator`, DDIM's `eta` and clipping flag).

        Raises:
            `ValueError`: ``eta`` is not a finite number >= 0 (``nan`` would turn every image into NaN without a word).
        """
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta={eta!r} must be a finite number >= 0 (DDIM's eta: 0 deterministic, 1 DDPM-like noise).")
        accepted = self.scheduler_step_arguments()
        kwargs = {}
        if "generator" in accepted:
            kwargs["generator"] = generator
        if "eta" in accepted:
            kwargs["eta"] = eta
        if use_clipped_model_output is not None:
            kwargs["use_clipped_model_output"] = use_clipped_model_output
        return kwargs

    def prepare_noise(
        self,
        batch_size: int,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
        timesteps_device: torch.device | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Set the scheduler's timesteps and return x_T: `randn_tensor` noise of the sample shape (or the given
        ``latents``, checked), times ``init_noise_sigma``. Stochastic schedulers draw their step noise from
        ``generator`` either way.

        ``timesteps_device``: where `set_timesteps` puts the timesteps (`None`: on the CPU, as `DDPMPipeline` does).
        """
        self.scheduler.set_timesteps(num_inference_steps, device=timesteps_device)
        shape = (batch_size, *self.sample_shape)
        if latents is None:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        else:
            noise = check_latents(latents, shape).to(device=device, dtype=self.unet.dtype)
        return noise * self.scheduler.init_noise_sigma

    def denoising_loop(
        self,
        sample: torch.Tensor,
        predict: Predict,
        step_kwargs: dict,
        callback_on_step_end: StepCallback | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """
        Run the scheduler's timesteps from ``sample``; ``predict(model_input, t, i)`` gives each step's model output.

        ``callback_on_step_end(pipe, i, t, {name: sample})`` runs after every step and may return ``{name: replacement}``
        (``name`` is ``_callback_tensor_inputs[0]``). ``start``: the index of the first timestep to run (a restart).
        """
        name = self._callback_tensor_inputs[0]
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps[start:]), start=start):
            model_input = self.scheduler.scale_model_input(sample, t)
            model_output = predict(model_input, t, i)
            sample = self.scheduler.step(model_output, t, sample, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                sample = callback_on_step_end(self, i, t, {name: sample}).get(name, sample)
        return sample

    def restart(
        self,
        sample: torch.Tensor,
        strength: float,
        num_inference_steps: int,
        predict: Predict,
        step_kwargs: dict,
        generator: torch.Generator | list[torch.Generator] | None,
        callback_on_step_end: StepCallback | None = None,
    ) -> torch.Tensor:
        """
        Re-noise the finished ``sample`` to the timestep where the last ``strength`` of the chain begins, then denoise
        it again from there (restart sampling, Xu et al. 2023; the re-noising is diffusers' img2img, SDEdit).

        A memorized training image is an attractor of the learned denoiser, so a sample that nearly copies one is
        pulled closer by a second pass over the low-noise steps, while which image it lands near is kept. The
        scheduler's state is reset first (`set_timesteps`, then `set_begin_index` where the scheduler has one, as
        img2img pipelines do); the fresh noise comes from ``generator`` after the first pass, so with one generator
        per image an image still regenerates alone.

        Args:
            sample (`torch.Tensor`): x_0 of the first pass (the UNet's sample space).
            strength (`float`): the fraction of the chain to re-run, in ``(0, 1]`` (`restart_steps` of it).
            num_inference_steps (`int`): the chain's steps.
            predict, step_kwargs, callback_on_step_end: as for `denoising_loop`.
            generator: the generator(s) of the call.

        Returns:
            `torch.Tensor`: x_0 after the restart.
        """
        steps = restart_steps(num_inference_steps, strength)
        self.scheduler.set_timesteps(num_inference_steps, device=self.scheduler.timesteps.device)
        start = (num_inference_steps - steps) * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        timestep = self.scheduler.timesteps[start]
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        sample = self.scheduler.add_noise(sample, noise, timestep.reshape(1).expand(len(sample)))
        return self.denoising_loop(sample, predict, step_kwargs, callback_on_step_end, start=start)

    def decode_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """The model-space images (nominally in ``[-1, 1]``) the UNet's ``samples`` stand for (see `codec`)."""
        return self.codec.decode(samples)

    def postprocess(self, images: torch.Tensor, output_type: str):
        """Model-space images in ``[-1, 1]`` as images in ``[0, 1]``, in the format ``output_type`` asks for."""
        return _IMAGE_PROCESSOR.postprocess(images, output_type=output_type)

    def finish(
        self,
        samples: torch.Tensor,
        output_type: str,
        return_dict: bool,
        output_class: type[BaseOutput],
        targets: torch.Tensor | None,
    ) -> BaseOutput | tuple:
        """Decode, convert, free offload hooks and return diffusers' way: ``output_class(images, targets)`` or ``(images,)``."""
        images = self.postprocess(self.decode_samples(samples), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return output_class(images=images, targets=targets)


def check_latents(latents: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Return ``latents`` if it is a finite tensor of ``shape``; raise `ValueError` naming the shape otherwise."""
    if not torch.is_tensor(latents) or tuple(latents.shape) != tuple(shape):
        got = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
        raise ValueError(f"latents must be a tensor of shape {tuple(shape)} (batch_size, C, H, W of the UNet); got {got}.")
    if not torch.isfinite(latents).all():
        raise ValueError("latents hold a NaN or an infinity; pass finite initial noise.")
    return latents
