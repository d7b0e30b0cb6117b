"""`SIDEPipeline`: unconditional diffusion sampling guided toward one surrogate condition at a time.

How a step is guided is the business of a guide (`diffusers_side.guidance`): the pipeline asks the guide for the
guided model output at every step inside its window. Everything around that step (input checks, targets, noise,
scheduler arguments, callbacks, decoding and output) is the sampling core the LoRA pipelines share
(`diffusers_side.pipelines.core`). A latent target (a ``vqvae``, as diffusers' `LDMPipeline`) is sampled and guided
in latent space and decoded before output.

`model_index.json` records the pipeline as ``["diffusers_side", "SIDEPipeline"]``: the top-level package must keep
exporting it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DModel, VQModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging, replace_example_docstring

from ..guidance.base import Guide, frozen
from ..guidance.classifier import check_classifier_reads
from ..guidance.exemplar import ExemplarPosterior
from ..guidance.registry import build_guide
from ..models.classifier import TimeDependentClassifier
from ..storage.embedded import EMBEDDED_CHOICES
from ..storage.sources import resolve_folder
from .core import SamplingMixin, check_guidance_scale, check_restart_strength, check_targets, draw_targets

logger = logging.get_logger(__name__)

DDIM_DEFAULT_STEPS = 50  # DDIMPipeline's default; DDPM schedulers default to their full chain like DDPMPipeline

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


class SIDEPipeline(SamplingMixin, DiffusionPipeline):
    r"""
    Sampling from an unconditional diffusion model with time-dependent classifier guidance (SIDE).

    Every denoising step replaces the model's noise prediction by

        eps_guided = eps_theta(x_t, t) - sqrt(1 - abar_t) * guidance_scale * grad_x log p_phi(c | x_t, t)

    (the "condition score" form of Dhariwal & Nichol, 2021), so any scheduler can take the step. With
    `guidance_scale=0` or no classifier the pipeline is exactly `DDPMPipeline` / `DDIMPipeline` (with a `vqvae`,
    `LDMPipeline` with its DDIM scheduler; x_t is then the latent, which the classifier reads).

    That is the default guide ([`~diffusers_side.guidance.classifier.ClassifierGuide`]); `guide=` takes any
    other (`diffusers_side.guidance`: the clean-image classifier guide of `guidance_space="x0"`, exemplar guidance
    of `exemplars=`, or your own [`~diffusers_side.guidance.base.Guide`]).

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
        vqvae ([`VQModel`] or [`AutoencoderKL`], *optional*): the autoencoder of a latent target, as in diffusers'
            `LDMPipeline` (the UNet and the classifier then work on its latents; see
            `diffusers_side.models.codec`). Samples are decoded by it before output, as `LDMPipeline` decodes them.
    """

    model_cpu_offload_seq = "unet"
    _optional_components = ["classifier", "vqvae"]
    # The classifier is small and runs at every step next to the UNet: keep it on the device.
    _exclude_from_cpu_offload = ["classifier"]
    _callback_tensor_inputs = ["image"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        classifier: TimeDependentClassifier | None = None,
        vqvae: VQModel | AutoencoderKL | None = None,
    ):
        super().__init__()
        if classifier is not None:
            check_classifier_reads(classifier, (unet.config.in_channels, *_sample_hw(unet.config.sample_size)))
        self.register_modules(unet=unet, scheduler=scheduler, classifier=classifier, vqvae=vqvae)

    @property
    def components(self) -> dict[str, Any]:
        """The modules this pipeline holds: `unet`, `scheduler` and, when there are, `classifier` and `vqvae`.

        Unlike `DiffusionPipeline.components`, a missing classifier or autoencoder is left out rather than listed
        as `None`, so that `DDPMPipeline(**pipe.components)` and `DDIMPipeline(**pipe.components)` work on an
        unguided pipeline (`LDMPipeline(**pipe.components)` on a latent one); `SIDEPipeline(**pipe.components)`
        works either way.
        """
        components = super().components
        for name in self._optional_components:
            if components.get(name) is None:
                components.pop(name, None)
        return components

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "SIDEPipeline":
        """
        Load a pipeline from a folder, an embedded model's name or a Hub repo id, safetensors only unless you opt in.

        The source is decided by `diffusers_side.storage.sources.ModelSource.parse`; a repo id is first resolved to
        a local snapshot with `huggingface_hub.snapshot_download` (honouring `HF_HUB_CACHE` and `HF_HUB_OFFLINE`):
        diffusers' own download path refuses third-party components such as the classifier unless remote code is
        trusted, which a plugin-pushed repo must not need.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): folder, embedded name or Hub repo id (``user/repo@rev``).
            use_safetensors (`bool`, *optional*, defaults to `True`): pass `False` to allow pickled
                `.bin` weights (only for checkpoints you trust: unpickling can run code).
            revision, cache_dir, token, local_files_only: forwarded to `snapshot_download`.
            kwargs: forwarded to `DiffusionPipeline.from_pretrained` (e.g. `torch_dtype`).
        """
        download = {k: kwargs.pop(k, None) for k in ("revision", "token")}
        download.update({k: kwargs.get(k) for k in ("cache_dir", "local_files_only")})
        source = str(resolve_folder(pretrained_model_name_or_path, "Pipeline folder", **download))
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

    def resolve_guide(
        self,
        guide: Guide | None = None,
        exemplars: ExemplarPosterior | None = None,
        guidance_window: tuple[float, float] | None = None,
        guidance_space: str = "xt",
    ) -> Guide | None:
        """The guide of a call: ``guide`` itself, or the one its keyword arguments describe (`None`: nothing to guide with).

        The keyword arguments are thin constructors (`diffusers_side.guidance.registry.build_guide`): the
        pipeline's classifier read on x_t (``guidance_space="xt"``, the paper) or on the predicted clean image
        (``"x0"``), or the exemplar posterior of ``exemplars``, each limited to ``guidance_window`` if given.
        """
        if guide is None:
            return build_guide(self.classifier, exemplars, guidance_window, guidance_space)
        if not isinstance(guide, Guide):
            raise TypeError(f"guide must be a diffusers_side.guidance.base.Guide, got {type(guide).__name__}.")
        if exemplars is not None or guidance_window is not None or guidance_space != "xt":
            raise ValueError(
                "guide= replaces exemplars=, guidance_window= and guidance_space=; pass the window to the guide "
                "(e.g. ClassifierGuide(classifier, window=(t_min, t_max))) and drop the other arguments."
            )
        return guide

    def check_inputs(
        self,
        batch_size: int,
        num_inference_steps: int,
        target: int | list[int] | torch.Tensor | None,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        use_clipped_model_output: bool | None = None,
        guide: Guide | None = None,
    ) -> None:
        """Raise `ValueError` on arguments that cannot be sampled (naming the argument and the fix)."""
        self.check_sampling_inputs(batch_size, num_inference_steps, generator, output_type, use_clipped_model_output)
        check_guidance_scale(guidance_scale, "use 0 for unguided sampling or a positive scale")
        if guide is None:
            if guidance_scale > 0 or target is not None:
                raise ValueError(
                    f"guidance_scale={guidance_scale}, target={target!r} need a classifier, but this pipeline has none; "
                    "build it with `SIDEPipeline(unet, scheduler, classifier=...)`, pass `exemplars=` or `guide=`, or set "
                    "guidance_scale=0 and target=None."
                )
            return
        guide.check(self, self.sample_shape, num_inference_steps if guidance_scale > 0 else None)
        check_targets(target, batch_size, guide.num_conditions)

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
        guide: Guide | None = None,
        exemplars: ExemplarPosterior | None = None,
        guidance_window: tuple[float, float] | None = None,
        guidance_space: str = "xt",
        latents: torch.Tensor | None = None,
        restart_strength: float = 0.0,
    ) -> SIDEPipelineOutput | tuple:
        r"""
        Generate images, guided toward surrogate conditions when there is a guide and a positive scale.

        Args:
            batch_size (`int`, defaults to 1): number of images.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): one generator, or one per image.
            target (`int`, `list[int]` or `torch.Tensor`, *optional*): the surrogate condition(s) to guide toward, one
                for all images or one per image. `None` draws one uniformly per image from `generator` (only when
                guidance is on, so unguided sampling consumes exactly the random numbers `DDPMPipeline` does).
            guidance_scale (`float`, *optional*): lambda. Defaults to 1.0 when there is a guide (the Bayes-exact
                conditional score; unlike classifier-free guidance, 1.0 is not "off"), 0 otherwise. 0 reproduces
                unconditional sampling exactly.
            num_inference_steps (`int`, *optional*): denoising steps; defaults to the full training chain with a
                `DDPMScheduler` (as `DDPMPipeline`) and to 50 with any other scheduler (as `DDIMPipeline`).
            eta, use_clipped_model_output: DDIM's, forwarded to `scheduler.step` as `DDIMPipeline` does (when it takes them).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, defaults to `True`): a [`SIDEPipelineOutput`] (with the targets), else `(images,)`.
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipe, i, t, {"image": x_t})` after
                every step (x_t is the latent of a latent target); it may return `{"image": replacement}`.
            guide ([`~diffusers_side.guidance.base.Guide`], *optional*): how to guide. Defaults to the pipeline's
                classifier read on x_t (the paper), as the three arguments below describe.
            exemplars ([`~diffusers_side.guidance.exemplar.ExemplarPosterior`], *optional*): guide with the exact
                posterior of this labelled synthetic set instead of the classifier (not in the SIDE paper).
            guidance_window (`tuple[float, float]`, *optional*): guide only at timesteps t in `[t_min, t_max]`
                (`None`: every step, the paper); a window holding no sampling timestep is refused.
            guidance_space (`str`, defaults to `"xt"`): a classifier guide of `diffusers_side.guidance.registry`:
                `"xt"` (the paper) or `"x0"` (the classifier reads the predicted clean image; lambda is then the
                fraction of eps's RMS moved per step, useful scales 0.02-0.2; see `CleanImageGuide`).
            latents (`torch.Tensor`, *optional*): the initial standard normal noise x_T, `(batch_size, C, H, W)`;
                `None` draws it from `generator` (see `prepare_noise`).
            restart_strength (`float`, defaults to 0): after the chain, re-noise each sample and re-run this fraction
                of the chain from it, guided as before (`SamplingMixin.restart`; not in the SIDE paper). 0: no restart,
                and the call is exactly the unrestarted one.

        Examples:

        Returns:
            [`SIDEPipelineOutput`] or `tuple`: images and targets (`targets` is `None` without guidance), or
            `(images,)` when `return_dict=False`. A latent target's samples are decoded by its `vqvae` first.
        """
        guide = self.resolve_guide(guide, exemplars, guidance_window, guidance_space)
        if guidance_scale is None:
            guidance_scale = 1.0 if guide is not None else 0.0
        if num_inference_steps is None:
            num_inference_steps = self.default_num_inference_steps()
        self.check_inputs(
            batch_size, num_inference_steps, target, guidance_scale, generator, output_type, use_clipped_model_output, guide
        )
        check_restart_strength(restart_strength, num_inference_steps)
        device = self._execution_device
        guided = guidance_scale > 0
        targets = None
        if guided or target is not None:
            targets = draw_targets(target, batch_size, guide.num_conditions, generator, device)
        samples = self.prepare_noise(batch_size, num_inference_steps, generator, device, latents=latents)
        step_kwargs = self.prepare_step_kwargs(generator, eta, use_clipped_model_output)
        samples = self.denoise(samples, step_kwargs, guide if guided else None, targets, guidance_scale, callback_on_step_end)
        if restart_strength > 0:
            samples = self.denoise(
                samples, step_kwargs, guide if guided else None, targets, guidance_scale, callback_on_step_end,
                restart=(restart_strength, num_inference_steps, generator),
            )
        return self.finish(samples, output_type, return_dict, SIDEPipelineOutput, targets)

    def denoise(
        self,
        samples: torch.Tensor,
        step_kwargs: dict,
        guide: Guide | None = None,
        targets: torch.Tensor | None = None,
        guidance_scale: float = 0.0,
        callback_on_step_end: Callable | None = None,
        restart: tuple[float, int, Any] | None = None,
    ) -> torch.Tensor:
        """Run the scheduler's timesteps from the noise ``samples``; at the steps ``guide`` is active, it gives the output.

        With ``restart=(strength, num_inference_steps, generator)``, ``samples`` is a finished x_0 instead, restarted
        from the last ``strength`` of the chain (`SamplingMixin.restart`).
        """

        def predict(model_input: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            guide_now = guide is not None and guide.active(t)
            model_output = None if guide_now and guide.runs_unet else self.unet(model_input, t).sample
            if guide_now:
                model_output = guide.guided_output(self, model_input, t, i, model_output, targets, guidance_scale)
            return model_output

        with contextlib.ExitStack() as stack:
            for module in guide.frozen_modules(self) if guide is not None else []:
                stack.enter_context(frozen(module))
            if restart is not None:
                strength, num_inference_steps, generator = restart
                return self.restart(samples, strength, num_inference_steps, predict, step_kwargs, generator, callback_on_step_end)
            return self.denoising_loop(samples, predict, step_kwargs, callback_on_step_end)

    def default_num_inference_steps(self) -> int:
        """`DDPMPipeline`'s default (the whole chain) with a `DDPMScheduler`, `DDIMPipeline`'s 50 otherwise."""
        if isinstance(self.scheduler, DDPMScheduler):
            return self.scheduler.config.num_train_timesteps
        return DDIM_DEFAULT_STEPS


def _sample_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)
