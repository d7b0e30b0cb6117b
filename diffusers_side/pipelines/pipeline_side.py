"""`SIDEPipeline`: unconditional diffusion sampling guided toward one surrogate condition at a time.

How a step is guided is the business of a guide (`diffusers_side.guidance`): the pipeline draws the noise and
the targets, runs the scheduler and asks the guide for the guided model output at every step inside its window.

`model_index.json` records the pipeline as ``["diffusers_side", "SIDEPipeline"]``: the top-level package must keep
exporting it.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
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

from ..guidance.base import Guide, frozen
from ..guidance.classifier import check_classifier_reads
from ..guidance.exemplar import ExemplarPosterior
from ..guidance.registry import build_guide
from ..models.classifier import TimeDependentClassifier
from ..storage.embedded import EMBEDDED_CHOICES

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")
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


class SIDEPipeline(DiffusionPipeline):
    r"""
    Sampling from an unconditional diffusion model with time-dependent classifier guidance (SIDE).

    Every denoising step replaces the model's noise prediction by

        eps_guided = eps_theta(x_t, t) - sqrt(1 - abar_t) * guidance_scale * grad_x log p_phi(c | x_t, t)

    (the "condition score" form of Dhariwal & Nichol, 2021), so any scheduler can take the step. With
    `guidance_scale=0` or no classifier the pipeline is exactly `DDPMPipeline` / `DDIMPipeline`.

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
    """

    model_cpu_offload_seq = "unet"
    _optional_components = ["classifier"]
    # The classifier is small and runs at every step next to the UNet: keep it on the device.
    _exclude_from_cpu_offload = ["classifier"]
    _callback_tensor_inputs = ["image"]

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, classifier: TimeDependentClassifier | None = None):
        super().__init__()
        if classifier is not None:
            check_classifier_reads(classifier, (unet.config.in_channels, *_sample_hw(unet.config.sample_size)))
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

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample of the UNet."""
        return (self.unet.config.in_channels, *_sample_hw(self.unet.config.sample_size))

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
        for name, value in (("batch_size", batch_size), ("num_inference_steps", num_inference_steps)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer (an int >= 1, not a bool).")
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
        if guide is None:
            if guidance_scale > 0 or target is not None:
                raise ValueError(
                    f"guidance_scale={guidance_scale}, target={target!r} need a classifier, but this pipeline has none; "
                    "build it with `SIDEPipeline(unet, scheduler, classifier=...)`, pass `exemplars=` or `guide=`, or set "
                    "guidance_scale=0 and target=None."
                )
            return
        guide.check(self, self.sample_shape, num_inference_steps if guidance_scale > 0 else None)
        if target is not None:
            targets = torch.as_tensor(target).reshape(-1)
            num_classes = guide.num_conditions
            if targets.numel() not in (1, batch_size):
                raise ValueError(f"Got {targets.numel()} targets for batch_size={batch_size}; pass one int or one per image.")
            if targets.is_floating_point() or targets.min() < 0 or targets.max() >= num_classes:
                raise ValueError(
                    f"target={target!r} is out of range: there are {num_classes} surrogate conditions "
                    f"(valid targets are 0..{num_classes - 1})."
                )

    def prepare_targets(
        self,
        target,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
        num_classes: int,
    ) -> torch.Tensor:
        """Fixed targets, or one of the ``num_classes`` conditions drawn uniformly per image from the generator(s)."""
        if target is not None:
            return torch.as_tensor(target, dtype=torch.long).reshape(-1).expand(batch_size).to(device)
        if isinstance(generator, list):
            draws = [torch.randint(num_classes, (1,), generator=g, device=g.device) for g in generator]
            return torch.cat([d.to(device) for d in draws])
        generator_device = generator.device if generator is not None else "cpu"
        return torch.randint(num_classes, (batch_size,), generator=generator, device=generator_device).to(device)

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
                every step; it may return `{"image": replacement}`.
            guide ([`~diffusers_side.guidance.base.Guide`], *optional*): how to guide. Defaults to the pipeline's
                classifier read on x_t (the paper), as the three arguments below describe.
            exemplars ([`~diffusers_side.guidance.exemplar.ExemplarPosterior`], *optional*): guide with the exact
                posterior of this labelled synthetic set instead of the classifier (not in the SIDE paper).
            guidance_window (`tuple[float, float]`, *optional*): guide only at timesteps t in `[t_min, t_max]`
                (`None`: every step, the paper); a window holding no sampling timestep is refused.
            guidance_space (`str`, defaults to `"xt"`): a classifier guide of `diffusers_side.guidance.registry`:
                `"xt"` (the paper) or `"x0"` (the classifier reads the predicted clean image; lambda is then the
                fraction of eps's RMS moved per step, useful scales 0.02-0.2; see `CleanImageGuide`).

        Examples:

        Returns:
            [`SIDEPipelineOutput`] or `tuple`: images and targets (`targets` is `None` without guidance), or
            `(images,)` when `return_dict=False`.
        """
        guide = self.resolve_guide(guide, exemplars, guidance_window, guidance_space)
        if guidance_scale is None:
            guidance_scale = 1.0 if guide is not None else 0.0
        if num_inference_steps is None:
            num_inference_steps = self.default_num_inference_steps()
        self.check_inputs(
            batch_size, num_inference_steps, target, guidance_scale, generator, output_type, use_clipped_model_output, guide
        )
        device = self._execution_device
        guided = guidance_scale > 0
        targets = None
        if guided or target is not None:
            targets = self.prepare_targets(target, batch_size, generator, device, guide.num_conditions)

        shape = (batch_size, *self.sample_shape)
        image = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        image = image * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps)
        step_kwargs = self.prepare_step_kwargs(generator, eta, use_clipped_model_output)
        image = self.denoise(image, step_kwargs, guide if guided else None, targets, guidance_scale, callback_on_step_end)

        image = self.postprocess(image, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return SIDEPipelineOutput(images=image, targets=targets)

    def denoise(
        self,
        image: torch.Tensor,
        step_kwargs: dict,
        guide: Guide | None = None,
        targets: torch.Tensor | None = None,
        guidance_scale: float = 0.0,
        callback_on_step_end: Callable | None = None,
    ) -> torch.Tensor:
        """Run the scheduler's timesteps from the noise ``image``; at the steps ``guide`` is active, it gives the output."""
        with contextlib.ExitStack() as stack:
            for module in guide.frozen_modules(self) if guide is not None else []:
                stack.enter_context(frozen(module))
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                model_input = self.scheduler.scale_model_input(image, t)
                guide_now = guide is not None and guide.active(t)
                model_output = None if guide_now and guide.runs_unet else self.unet(model_input, t).sample
                if guide_now:
                    model_output = guide.guided_output(self, model_input, t, i, model_output, targets, guidance_scale)
                image = self.scheduler.step(model_output, t, image, **step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    image = callback_on_step_end(self, i, t, {"image": image}).get("image", image)
        return image

    def postprocess(self, image: torch.Tensor, output_type: str):
        """Samples in [-1, 1] as images in [0, 1], in the format ``output_type`` asks for."""
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()  # float(): numpy has no bfloat16
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        return image

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


def _sample_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)
