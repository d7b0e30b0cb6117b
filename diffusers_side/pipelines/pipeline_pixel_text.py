"""`PixelTextPipeline`: a small pixel-space text-to-image pipeline (no VAE), for CPU experiments such as canary audits.

A `UNet2DConditionModel` denoises pixels directly, conditioned on a CLIP text encoder's hidden states, with
classifier-free guidance against the empty prompt when ``guidance_scale > 1`` (as `StableDiffusionPipeline`).
It exists so that a text-conditional model can be trained from scratch on the embedded 16x16 digits on a CPU
(`benchmarks/canary_measured.py`); for real audits use the fine-tuned model itself.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer


class PixelTextPipeline(DiffusionPipeline):
    r"""
    Text-to-image sampling of a pixel-space `UNet2DConditionModel`.

    Args:
        unet ([`UNet2DConditionModel`]): the denoiser of pixels in [-1, 1].
        text_encoder ([`CLIPTextModel`]), tokenizer ([`CLIPTokenizer`]): the prompt encoder.
        scheduler ([`SchedulerMixin`]): a diffusers scheduler (DDIM, DDPM, ...).

    Example:

    ```py
    >>> pipe = PixelTextPipeline.from_pretrained("canary-digits/model")
    >>> pipe(["digit 3", "digit 7"], generator=torch.Generator().manual_seed(0), num_inference_steps=25).images
    ```
    """

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states, tokenized to the tokenizer's full length as `StableDiffusionPipeline` does."""
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(self._execution_device))[0].to(self.unet.dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """
        Generate one image per prompt.

        Args:
            prompt (`str` or `list[str]`): the prompts.
            generator (*optional*): one generator, or one per image.
            num_inference_steps (`int`): denoising steps.
            guidance_scale (`float`): > 1: classifier-free guidance against the empty prompt; otherwise the prompt alone.
            eta (`float`): DDIM's eta (ignored by schedulers without it).
            output_type (`str`): ``"pil"``, ``"np"`` or ``"pt"`` (images in [0, 1]).
            return_dict (`bool`): an [`ImagePipelineOutput`], else ``(images,)``.

        Returns:
            [`ImagePipelineOutput`] or `tuple`.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or output_type not in ("pil", "np", "pt"):
            raise ValueError(f"prompt must be a non-empty string or list and output_type one of pil, np, pt; got {prompt!r}, {output_type!r}.")
        embeddings = self.encode_prompts(prompts)
        guided = guidance_scale > 1
        if guided:
            embeddings = torch.cat([self.encode_prompts([""] * len(prompts)), embeddings])
        size = self.unet.config.sample_size
        shape = (len(prompts), self.unet.config.in_channels, size, size)
        sample = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        step_kwargs = {"eta": eta} if "eta" in self.scheduler.step.__code__.co_varnames else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([sample, sample]) if guided else sample
            output = self.unet(self.scheduler.scale_model_input(model_input, t), t, encoder_hidden_states=embeddings).sample
            if guided:
                uncond, cond = output.chunk(2)
                output = uncond + guidance_scale * (cond - uncond)
            sample = self.scheduler.step(output, t, sample, generator=generator, **step_kwargs).prev_sample
        images = (sample / 2 + 0.5).clamp(0, 1).cpu()
        if output_type != "pt":
            images = images.permute(0, 2, 3, 1).float().numpy()
            images = self.numpy_to_pil(images) if output_type == "pil" else images
        return ImagePipelineOutput(images=images) if return_dict else (images,)
