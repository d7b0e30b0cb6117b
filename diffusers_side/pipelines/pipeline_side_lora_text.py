"""`SIDELoRATextPipeline`: SIDE's LoRA branch for text-conditional (Stable-Diffusion-style) pipelines.

A text-to-image model is audited from a user prompt p: its samples for p are labelled (``side label`` on
the decoded images), then LoRA adapters on the UNet's attention layers are fine-tuned so that the prompt
``"p <identifier of label k>"`` samples surrogate label k. Each label's identifier is a short, unique,
non-semantic string (``zq`` + three consonants, in the spirit of DreamBooth's rare tokens), so no token
has to be added to the tokenizer; the prompt alone plays the role of the null label (label dropout during
training drops the identifier), which gives classifier-free guidance between "p" and "p <label>".

As for the `UNet2DModel` branch, only the adapters and ``side_lora.json`` (base pipeline, labels, prompt)
are saved; `from_pretrained` loads the base with diffusers and puts the adapters back on its UNet.

What a GPU user runs on Stable Diffusion 1.5 (the paper: rank 512, lr 1e-5; ``SD`` below stands for
``stable-diffusion-v1-5/stable-diffusion-v1-5``). ``side synthesize`` drives `UNet2DModel` pipelines only,
so step 1 is Python; ``side extract`` samples the adapters with their training prompt:

```bash
# 1. sample the prompt: StableDiffusionPipeline.from_pretrained(SD)("a photo", guidance_scale=1.0, ...) saved as PNGs in sd/synthetic/
side label --synthetic sd/synthetic --features facebook/dinov2-small --clusters 100 --output sd/labels   # 2. labels
accelerate launch training/train_lora.py --pretrained_model_name_or_path SD --train_data_dir sd/labels \
    --prompt "a photo" --rank 512 --learning_rate 1e-5 --max_train_steps 5000 --train_batch_size 8 \
    --mixed_precision bf16 --checkpointing_steps 500 --output_dir sd/lora-side                     # 3. fine-tune
side extract --pipeline sd/lora-side --method side-lora --guidance-scale 3 --num-images 1000 --output sd/side-lora
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from transformers import CLIPTextModel, CLIPTokenizer

from ..models.lora import (
    DEFAULT_TEXT_UNET_TARGETS,
    add_lora_adapters,
    check_base_unet,
    classifier_free_guidance,
    load_lora_conditioning,
    read_lora_config,
    save_lora_conditioning,
)
from ..storage.sources import ModelSource, resolve_folder
from .core import SamplingMixin, check_guidance_scale, check_targets, draw_targets

logger = logging.get_logger(__name__)

PIPELINE_CLASS = "SIDELoRATextPipeline"
IDENTIFIER_PREFIX = "zq"
CONSONANTS = "bcdfghjklmnpqrstvwxz"
MAX_LABELS = len(CONSONANTS) ** 3
GUIDANCE_SCALE_HINT = "use 0 (the prompt alone), 1 (the label's prompt) or more (classifier-free guidance)"

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers_side.pipelines.pipeline_side_lora_text import SIDELoRATextPipeline

        >>> pipe = SIDELoRATextPipeline.from_pretrained("path/or/user-repo")  # base SD pipeline + adapters
        >>> out = pipe("a photo", batch_size=4, target=[0, 0, 1, 1], guidance_scale=3.0,
        ...            generator=torch.Generator().manual_seed(0))
        >>> out.images[0].save("extracted.png"), out.targets
        ```
"""


def label_identifier(label: int) -> str:
    """
    The identifier string of surrogate label ``label``: ``"zq"`` and three consonants (8,000 distinct identifiers).

    Example:

    ```py
    >>> label_identifier(0), label_identifier(21)
    ('zqbbb', 'zqbcc')
    ```
    """
    if not 0 <= label < MAX_LABELS:
        raise ValueError(f"label={label} has no identifier; text LoRA-SIDE supports 0..{MAX_LABELS - 1}.")
    first, rest = divmod(label, len(CONSONANTS) ** 2)
    second, third = divmod(rest, len(CONSONANTS))
    return IDENTIFIER_PREFIX + CONSONANTS[first] + CONSONANTS[second] + CONSONANTS[third]


def label_prompt(prompt: str, label: int | None) -> str:
    """The prompt of ``label`` (``None``: the null label, i.e. the prompt alone)."""
    return prompt if label is None else f"{prompt} {label_identifier(label)}"


@dataclass
class SIDELoRATextPipelineOutput(BaseOutput):
    """
    Output of [`SIDELoRATextPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the decoded images.
        targets (`torch.Tensor` or `None`): the surrogate label of each image; `None` for the prompt alone.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    targets: torch.Tensor | None


class SIDELoRATextPipeline(SamplingMixin, DiffusionPipeline):
    r"""
    Surrogate-conditional sampling of a LoRA-fine-tuned text-conditional UNet (SIDE's LoRA branch for SD-style models).

    Each step predicts with ``"prompt <label identifier>"`` and, for classifier-free guidance, with the prompt alone:
    ``out = out(prompt) + guidance_scale * (out(prompt + label) - out(prompt))``. ``guidance_scale=0`` samples the
    prompt alone (before training: exactly `StableDiffusionPipeline` at ``guidance_scale=1``), 1 the label's prompt.

    Args:
        vae ([`AutoencoderKL`]), text_encoder ([`CLIPTextModel`]), tokenizer ([`CLIPTokenizer`]),
        unet ([`UNet2DConditionModel`] carrying a peft LoRA adapter), scheduler ([`SchedulerMixin`]):
            the base pipeline's components.
        num_labels (`int`): K', the number of surrogate labels (required; a keyword only so that diffusers counts
            it as a setting, not a component).
        prompt (`str`, *optional*): the prompt the adapters were trained with (used when a call passes none).
        base_model (`str`, *optional*): where the base pipeline comes from; recorded by `save_pretrained`.
        label_info (`dict`, *optional*): what the labels mean (`SurrogateLabels.to_label_info()`).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        num_labels: int | None = None,
        prompt: str | None = None,
        base_model: str | None = None,
        label_info: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not isinstance(num_labels, int) or not 1 <= num_labels <= MAX_LABELS:
            raise ValueError(f"num_labels={num_labels!r} must be an integer in 1..{MAX_LABELS} (the number of surrogate labels).")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.num_labels = num_labels
        self.prompt = prompt
        self.base_model = base_model
        self.label_info = label_info or {"num_labels": num_labels}

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
        prompt: str | None = None,
    ) -> "SIDELoRATextPipeline":
        """
        Attach fresh LoRA adapters (the identity until trained) to the UNet of a text-conditional pipeline.

        Args:
            base: a loaded pipeline with vae, text_encoder, tokenizer and a `UNet2DConditionModel`, or a folder / repo id.
            num_labels (`int`): K'.
            rank (`int`): LoRA rank.
            lora_alpha (`float`, *optional*): LoRA alpha (default: ``rank``).
            target_modules (`list[str]`, *optional*): layer-name suffixes (default: the attention projections).
            label_info (`dict`, *optional*): what the labels mean.
            use_safetensors (`bool`): ``False`` accepts a pickled base checkpoint (trusted files only).
            prompt (`str`, *optional*): the prompt the synthetic set was generated from.

        Returns:
            [`SIDELoRATextPipeline`]

        Raises:
            `TypeError`: the base is not a text-conditional pipeline. `ValueError`: bad rank, labels or targets.
        """
        base_model = None if isinstance(base, DiffusionPipeline) else str(base)
        if base_model is not None:
            base = load_text_base(base_model, use_safetensors)
        components = check_text_components(base)
        add_lora_adapters(components["unet"], rank, lora_alpha, target_modules, DEFAULT_TEXT_UNET_TARGETS)
        info = {"num_labels": num_labels, **(label_info or {})}
        return cls(**components, num_labels=num_labels, prompt=prompt, base_model=base_model, label_info=info)

    def lora_config(self) -> dict[str, Any]:
        """What ``side_lora.json`` records: the base, the labels and their identifiers, the prompt, the adapters' settings."""
        peft_config = self.unet.peft_config["default"]
        return {
            "pipeline_class": PIPELINE_CLASS,
            "base_model": self.base_model,
            "num_labels": self.num_labels,
            "label_identifiers": [label_identifier(k) for k in range(self.num_labels)],
            "prompt": self.prompt,
            "label_info": self.label_info,
            "rank": peft_config.r,
            "lora_alpha": peft_config.lora_alpha,
            "target_modules": sorted(peft_config.target_modules),
            "base_unet_config": {k: v for k, v in self.unet.config.items() if not k.startswith("_")},
        }

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the adapters and ``side_lora.json`` (the base pipeline is referenced, not copied)."""
        if kwargs:
            raise TypeError(f"SIDELoRATextPipeline.save_pretrained takes no options, got {sorted(kwargs)}.")
        if self.base_model is None:
            raise ValueError("This pipeline does not know its base model; set pipe.base_model (a folder or repo id).")
        save_lora_conditioning(self.unet, save_directory, self.lora_config())

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, base_model: str | None = None, **kwargs
    ) -> "SIDELoRATextPipeline":
        """
        Load a text LoRA-SIDE folder or Hub repo: its base pipeline (by diffusers) plus its adapters.

        Args:
            pretrained_model_name_or_path: a folder written by `save_pretrained` / `side train-lora`, or a repo id.
            base_model (`str`, *optional*): use this base instead of the recorded one (same UNet config required).
            use_safetensors (`bool`, *optional*, defaults to `True`): ``False`` accepts a pickled base.
            revision, cache_dir, token, local_files_only: forwarded to `snapshot_download` for a repo id.

        Returns:
            [`SIDELoRATextPipeline`]
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
        base = load_text_base(base_source.resolved, use_safetensors)
        components = check_text_components(base)
        check_base_unet(components["unet"], config["base_unet_config"], base_model)
        load_lora_conditioning(components["unet"], folder, config, DEFAULT_TEXT_UNET_TARGETS)
        components["unet"].requires_grad_(False).eval()
        return cls(
            **components,
            num_labels=config["num_labels"],
            prompt=config["prompt"],
            base_model=base_model,
            label_info=config["label_info"],
        )

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states of ``prompts``, tokenized as `StableDiffusionPipeline` does."""
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(self._execution_device))[0].to(self.unet.dtype)

    def check_inputs(self, prompt, batch_size, num_inference_steps, target, guidance_scale, generator, output_type) -> list[str]:
        """Raise a `ValueError` naming the bad argument; return one prompt per image."""
        self.check_sampling_inputs(batch_size, num_inference_steps, generator, output_type)
        prompt = prompt if prompt is not None else self.prompt
        if not prompt:
            raise ValueError(
                "A text-conditional LoRA-SIDE pipeline needs a prompt: pass prompt='...' (the prompt the synthetic set "
                "was generated from), or train with --prompt so the pipeline records it."
            )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if len(prompts) not in (1, batch_size):
            raise ValueError(f"Got {len(prompts)} prompts for batch_size={batch_size}; pass one prompt or one per image.")
        check_guidance_scale(guidance_scale, GUIDANCE_SCALE_HINT)
        check_targets(target, batch_size, self.num_labels, "surrogate labels", "; the prompt alone is the null label")
        return prompts * batch_size if len(prompts) == 1 else prompts

    def predict(self, model_input, t, null_embeddings, label_embeddings, guidance_scale: float) -> torch.Tensor:
        """The model output for this step: the prompt alone, the label's prompt, or their classifier-free guidance."""
        if guidance_scale == 0:
            return self.unet(model_input, t, encoder_hidden_states=null_embeddings).sample
        if guidance_scale == 1:
            return self.unet(model_input, t, encoder_hidden_states=label_embeddings).sample
        both = self.unet(
            torch.cat([model_input, model_input]), t, encoder_hidden_states=torch.cat([null_embeddings, label_embeddings])
        ).sample
        return classifier_free_guidance(*both.chunk(2), guidance_scale, channels=model_input.shape[1])

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        batch_size: int = 1,
        target: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["SIDELoRATextPipeline", int, torch.Tensor, dict], dict] | None = None,
    ) -> SIDELoRATextPipelineOutput | tuple:
        r"""
        Generate images for a prompt, conditioned on surrogate labels, with optional classifier-free guidance.

        Args:
            prompt (`str` or `list[str]`, *optional*): one prompt or one per image; defaults to the training prompt.
            batch_size (`int`, defaults to 1): number of images.
            target (`int`, `list[int]` or `torch.Tensor`, *optional*): surrogate label(s); `None` draws one per image
                from `generator` (when `guidance_scale > 0`).
            guidance_scale (`float`, defaults to 1.0): 0 = the prompt alone, 1 = the label's prompt, > 1 = CFG.
            num_inference_steps (`int`, defaults to 50): denoising steps.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): one generator, or one per image.
            eta (`float`, defaults to 0.0): DDIM's eta; ignored by schedulers that do not take it.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, defaults to `True`): a [`SIDELoRATextPipelineOutput`] (with the targets), else `(images,)`.
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipe, i, t, {"latents": latents})`
                after every step; it may return `{"latents": replacement}`.

        Examples:

        Returns:
            [`SIDELoRATextPipelineOutput`] or `tuple`: images (decoded by the VAE) and targets, or `(images,)` when
            `return_dict=False`, as diffusers' pipelines return.
        """
        prompts = self.check_inputs(prompt, batch_size, num_inference_steps, target, guidance_scale, generator, output_type)
        device = self._execution_device
        conditional = guidance_scale > 0 or target is not None  # scale 0 keeps given targets, unused
        targets = draw_targets(target, batch_size, self.num_labels, generator, device) if conditional else None
        null_embeddings = self.encode_prompts(prompts)
        label_embeddings = None
        if guidance_scale > 0:
            label_embeddings = self.encode_prompts([label_prompt(p, int(k)) for p, k in zip(prompts, targets)])
        latents = self.prepare_noise(batch_size, num_inference_steps, generator, device, timesteps_device=device)
        latents = self.denoising_loop(
            latents,
            lambda model_input, t, i: self.predict(model_input, t, null_embeddings, label_embeddings, guidance_scale),
            self.prepare_step_kwargs(generator, eta),
            callback_on_step_end,
        )
        return self.finish(latents, output_type, return_dict, SIDELoRATextPipelineOutput, targets)


def load_text_base(spec: str | os.PathLike, use_safetensors: bool | None = True) -> DiffusionPipeline:
    """A text-conditional base pipeline with diffusers' own loader, from a folder, an embedded name or ``user/repo@rev``."""
    source = ModelSource.parse(spec, what="Base pipeline")
    return DiffusionPipeline.from_pretrained(source.name_or_path, revision=source.revision, use_safetensors=use_safetensors)


def check_text_components(pipe: DiffusionPipeline) -> dict[str, Any]:
    """The vae, text encoder, tokenizer, UNet and scheduler of a text-conditional pipeline; `TypeError` otherwise."""
    components = {name: getattr(pipe, name, None) for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    missing = [name for name, component in components.items() if component is None]
    if missing or not isinstance(components["unet"], UNet2DConditionModel):
        raise TypeError(
            f"{type(pipe).__name__} is not a text-conditional pipeline (missing {missing or 'a UNet2DConditionModel'}); "
            "use SIDELoRAPipeline for unconditional UNet2DModel pipelines."
        )
    return components
