"""`SIDELoRAPipeline`: sampling an audited `UNet2DModel` made conditional on surrogate labels by LoRA.

SIDE's second branch (see `diffusers_side.models.lora`): the audited UNet gets a zero-initialised class
embedding over the K' surrogate labels plus a null label, and LoRA adapters; both are fine-tuned on the
pseudo-labelled synthetic set with label dropout. Sampling then conditions on one label per image, with
optional classifier-free guidance. A saved folder holds only the adapters, the class embedding and a
reference to the base pipeline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging, replace_example_docstring

from ..models.lora import (
    DEFAULT_UNET_TARGETS,
    add_label_conditioning,
    add_lora_adapters,
    check_base_unet,
    classifier_free_guidance,
    is_text_conditional,
    load_lora_conditioning,
    read_lora_config,
    save_lora_conditioning,
)
from ..storage.sources import ModelSource, resolve_folder
from .core import SamplingMixin, check_guidance_scale, check_targets, draw_targets
from .pipeline_side import SIDEPipeline

logger = logging.get_logger(__name__)

PIPELINE_CLASS = "SIDELoRAPipeline"
GUIDANCE_SCALE_HINT = "use 0 (unconditional), 1 (conditional) or more (classifier-free guidance)"

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_side import SIDELoRAPipeline

        >>> pipe = SIDELoRAPipeline.from_pretrained("path/or/user-repo")  # base pipeline + adapters + class embedding
        >>> generator = torch.Generator().manual_seed(0)
        >>> out = pipe(batch_size=4, target=[0, 0, 1, 1], guidance_scale=3.0, generator=generator)
        >>> out.images[0].save("extracted.png"), out.targets
        ```
"""


@dataclass
class SIDELoRAPipelineOutput(BaseOutput):
    """
    Output of [`SIDELoRAPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the generated images.
        targets (`torch.Tensor` or `None`): the surrogate label each image was conditioned on, shape
            `(batch_size,)`; `None` for unconditional (null-label) sampling.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    targets: torch.Tensor | None


class SIDELoRAPipeline(SamplingMixin, DiffusionPipeline):
    r"""
    Surrogate-conditional sampling of a LoRA-fine-tuned `UNet2DModel` (SIDE's LoRA branch).

    Each step predicts with the image's surrogate label c and, for classifier-free guidance, with the null
    label: ``out = out(null) + guidance_scale * (out(c) - out(null))``. ``guidance_scale=1`` is plain
    conditional sampling (one UNet call per step), ``0`` is unconditional sampling with the null label (before
    any training, bit-identical to `DDIMPipeline` / `DDPMPipeline` on the base model), ``> 1`` strengthens the
    condition.

    Args:
        unet ([`UNet2DModel`]): the base UNet rebuilt with a class embedding over K' + 1 labels (label K' is
            the null label) and carrying a peft LoRA adapter; see [`~SIDELoRAPipeline.from_base`].
        scheduler ([`SchedulerMixin`]): any diffusers scheduler.
        base_model (`str`, *optional*): where the base pipeline comes from (an embedded name such as ``"default"``, a folder
            or a Hub repo id); recorded by `save_pretrained` so the adapters can be put back on it.
        label_info (`dict`, *optional*): what the labels mean (`SurrogateLabels.to_label_info()`).
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["image"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        base_model: str | None = None,
        label_info: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not isinstance(unet, UNet2DModel) or unet.config.num_class_embeds is None:
            raise ValueError(
                "SIDELoRAPipeline needs a UNet2DModel with a class embedding (num_class_embeds = K' + 1); build "
                "one from an unconditional pipeline with SIDELoRAPipeline.from_base(...)."
            )
        self.register_modules(unet=unet, scheduler=scheduler)
        self.base_model = base_model
        self.label_info = label_info or {"num_labels": unet.config.num_class_embeds - 1}

    @property
    def num_labels(self) -> int:
        """K', the number of surrogate labels (the null label is ``num_labels``)."""
        return self.unet.config.num_class_embeds - 1

    @property
    def null_label(self) -> int:
        """The label meaning "no label" (trained by label dropout, used for classifier-free guidance)."""
        return self.num_labels

    @classmethod
    def from_base(
        cls,
        base: str | os.PathLike | DiffusionPipeline,
        num_labels: int,
        rank: int,
        lora_alpha: float | None = None,
        target_modules: Sequence[str] | None = None,
        label_info: dict[str, Any] | None = None,
        use_safetensors: bool = True,
    ) -> "SIDELoRAPipeline":
        """
        Make an unconditional pipeline label-conditional, ready to fine-tune (its output is unchanged until then).

        Args:
            base: a loaded pipeline with a `UNet2DModel`, or an embedded name (``"default"``, ...), a folder or a Hub repo id.
            num_labels (`int`): K', the number of surrogate labels.
            rank (`int`): LoRA rank.
            lora_alpha (`float`, *optional*): LoRA alpha (default: ``rank``).
            target_modules (`list[str]`, *optional*): layer-name suffixes to adapt (default: those of
                `DEFAULT_UNET_TARGETS` the UNet has).
            label_info (`dict`, *optional*): what the labels mean, saved with the adapters.
            use_safetensors (`bool`): ``False`` accepts a pickled base checkpoint (trusted files only).

        Returns:
            [`SIDELoRAPipeline`]

        Raises:
            `ValueError` / `TypeError`: bad rank, label count, targets, or a UNet that is not an unconditional
                `UNet2DModel` — all before anything is trained.
        """
        base_model = None if isinstance(base, DiffusionPipeline) else str(base)
        if base_model is not None and is_text_conditional(base_model):
            raise TypeError(
                f"{base_model} is a text-conditional pipeline; use SIDELoRATextPipeline (one prompt per label) for it."
            )
        if base_model is not None:
            base = SIDEPipeline.from_pretrained(base_model, use_safetensors=use_safetensors)
        if getattr(base, "vqvae", None) is not None:
            raise ValueError(
                f"{base_model or type(base).__name__} is a latent target (a UNet over the latents of its vqvae); LoRA-SIDE "
                "fine-tunes pixel-space UNets and text-conditional pipelines: audit it with the classifier branch."
            )
        unet = add_label_conditioning(base.unet, num_labels)
        add_lora_adapters(unet, rank, lora_alpha, target_modules, DEFAULT_UNET_TARGETS)
        info = {"num_labels": num_labels, **(label_info or {})}
        return cls(unet=unet, scheduler=base.scheduler, base_model=base_model, label_info=info)

    def lora_config(self) -> dict[str, Any]:
        """What ``side_lora.json`` records: the base, the labels, the adapters' settings and the base UNet's config."""
        peft_config = self.unet.peft_config["default"]
        base_unet_config = {k: v for k, v in self.unet.config.items() if not k.startswith("_")}
        base_unet_config["num_class_embeds"] = None
        return {
            "pipeline_class": PIPELINE_CLASS,
            "base_model": self.base_model,
            "num_labels": self.num_labels,
            "null_label": self.null_label,
            "label_info": self.label_info,
            "rank": peft_config.r,
            "lora_alpha": peft_config.lora_alpha,
            "target_modules": sorted(peft_config.target_modules),
            "base_unet_config": base_unet_config,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """
        Save the adapters, the class embedding and ``side_lora.json`` (the base pipeline is referenced, not copied).

        Args:
            save_directory: the output folder.
            kwargs: refused (this pipeline writes safetensors only and pushes with `diffusers_side.storage.hub`).

        Raises:
            `ValueError`: the pipeline has no base reference (build it with `from_base` from a name or folder).
        """
        if kwargs:
            raise TypeError(f"SIDELoRAPipeline.save_pretrained takes no options, got {sorted(kwargs)}.")
        if self.base_model is None:
            raise ValueError(
                "This pipeline does not know its base model; build it with SIDELoRAPipeline.from_base(an embedded name "
                "such as 'default', a folder or a repo id) or set pipe.base_model before saving."
            )
        save_lora_conditioning(self.unet, save_directory, self.lora_config())

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, base_model: str | None = None, **kwargs
    ) -> "SIDELoRAPipeline":
        """
        Load a fine-tuned LoRA-SIDE folder or Hub repo: the base pipeline it names, plus its class embedding and adapters.

        Args:
            pretrained_model_name_or_path: a folder written by `save_pretrained` (or `side train-lora`) or a repo id.
            base_model (`str`, *optional*): load the adapters onto this base instead of the recorded one (e.g. a
                local copy); its UNet config must equal the recorded one.
            use_safetensors (`bool`, *optional*, defaults to `True`): ``False`` accepts a pickled *base* checkpoint
                (trusted files only); the adapters are always read from safetensors.
            revision, cache_dir, token, local_files_only: forwarded to `snapshot_download` for a repo id.

        Returns:
            [`SIDELoRAPipeline`]

        Raises:
            `FileNotFoundError`: the folder is not a LoRA-SIDE folder.
            `ValueError`: the base UNet differs from the one the adapters were trained on.
        """
        use_safetensors = kwargs.pop("use_safetensors", True)
        download = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
        if kwargs:
            raise TypeError(f"Unexpected arguments {sorted(kwargs)}.")
        folder = resolve_folder(pretrained_model_name_or_path, "LoRA-SIDE folder", **download)
        config = read_lora_config(folder)
        if config.get("pipeline_class") != PIPELINE_CLASS:
            raise ValueError(f"{folder} holds a {config.get('pipeline_class')}, not a {PIPELINE_CLASS}.")
        base_source = ModelSource.parse(base_model, what="base_model") if base_model else ModelSource.from_record(config["base_model"])
        base_model = base_model or config["base_model"]
        base = SIDEPipeline.from_pretrained(base_source.resolved, use_safetensors=use_safetensors)
        check_base_unet(base.unet, config["base_unet_config"], base_model)
        unet = add_label_conditioning(base.unet, config["num_labels"])
        load_lora_conditioning(unet, folder, config, DEFAULT_UNET_TARGETS)
        unet.requires_grad_(False).eval()
        return cls(unet=unet, scheduler=base.scheduler, base_model=base_model, label_info=config["label_info"])

    def check_inputs(self, batch_size, num_inference_steps, target, guidance_scale, generator, output_type) -> None:
        """Raise a `ValueError` naming the bad argument before any sampling."""
        self.check_sampling_inputs(batch_size, num_inference_steps, generator, output_type)
        check_guidance_scale(guidance_scale, GUIDANCE_SCALE_HINT)
        null_note = f"; {self.num_labels} is the null label, used through guidance_scale"
        check_targets(target, batch_size, self.num_labels, "surrogate labels", null_note)

    def predict(self, model_input: torch.Tensor, t: torch.Tensor, targets: torch.Tensor | None, guidance_scale: float):
        """The model output for this step: null label, label, or their classifier-free guidance combination."""
        null = torch.full((model_input.shape[0],), self.null_label, dtype=torch.long, device=model_input.device)
        if targets is None:
            return self.unet(model_input, t, class_labels=null).sample
        if guidance_scale == 1:
            return self.unet(model_input, t, class_labels=targets).sample
        both = self.unet(torch.cat([model_input, model_input]), t, class_labels=torch.cat([null, targets])).sample
        return classifier_free_guidance(*both.chunk(2), guidance_scale, channels=model_input.shape[1])

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        batch_size: int = 1,
        target: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["SIDELoRAPipeline", int, torch.Tensor, dict], dict] | None = None,
    ) -> SIDELoRAPipelineOutput | tuple:
        r"""
        Generate images conditioned on surrogate labels, with optional classifier-free guidance.

        Args:
            batch_size (`int`, defaults to 1): number of images.
            target (`int`, `list[int]` or `torch.Tensor`, *optional*): the surrogate label(s), one for all images or
                one per image. `None` draws one uniformly per image from `generator` (when `guidance_scale > 0`).
                With `guidance_scale=0` given targets are returned but not used (as `SIDEPipeline` does).
            guidance_scale (`float`, defaults to 1.0): 0 = null label (unconditional), 1 = conditional, > 1 = CFG.
            num_inference_steps (`int`, defaults to 50): denoising steps (a positive integer).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): one generator, or one per image.
            eta (`float`, defaults to 0.0): DDIM's eta; ignored by schedulers that do not take it.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, defaults to `True`): a [`SIDELoRAPipelineOutput`] (with the targets), else `(images,)`.
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipe, i, t, {"image": x_t})` after every
                step; it may return `{"image": replacement}`.

        Examples:

        Returns:
            [`SIDELoRAPipelineOutput`] or `tuple`: images and targets (`None` with `guidance_scale=0` and no target), or
            `(images,)` when `return_dict=False`, as diffusers' pipelines return.
        """
        self.check_inputs(batch_size, num_inference_steps, target, guidance_scale, generator, output_type)
        device = self._execution_device
        conditional = guidance_scale > 0 or target is not None  # as SIDEPipeline: scale 0 keeps given targets, unused
        targets = draw_targets(target, batch_size, self.num_labels, generator, device) if conditional else None
        used = targets if guidance_scale > 0 else None
        samples = self.prepare_noise(batch_size, num_inference_steps, generator, device)
        samples = self.denoising_loop(
            samples,
            lambda model_input, t, i: self.predict(model_input, t, used, guidance_scale),
            self.prepare_step_kwargs(generator, eta),
            callback_on_step_end,
        )
        return self.finish(samples, output_type, return_dict, SIDELoRAPipelineOutput, targets)
