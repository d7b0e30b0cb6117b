"""SIDE's LoRA branch: the target fine-tuned on the surrogate labels (``side train-lora``), sampled one label per
image; its guidance scale is the classifier-free one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ExtractionMethod, Steering


@dataclass(frozen=True)
class LoRAMethod(ExtractionMethod):
    """Samples a `SIDELoRAPipeline` (or, with its training prompt, a `SIDELoRATextPipeline`) from ``side train-lora``."""

    guided: ClassVar[bool] = True
    scale_name: ClassVar[str] = "classifier-free guidance scale"

    def accepts(self, option: str, value) -> bool:
        return False

    def refusal(self, option: str, value) -> str:
        return "it samples a LoRA model"

    def check_pipeline(self, pipe) -> None:
        from ..pipelines.pipeline_side_lora import SIDELoRAPipeline
        from ..pipelines.pipeline_side_lora_text import SIDELoRATextPipeline

        if not isinstance(pipe, (SIDELoRAPipeline, SIDELoRATextPipeline)):
            raise ValueError(
                f"method={self.name!r} samples a model fine-tuned on the surrogate labels; pass the output folder "
                "of `side train-lora` as --pipeline."
            )

    def help_text(self) -> str:
        return f"{self.description} (default {self.default_guidance_scale:g})"  # the description names the scale

    def steering(self, pipe, settings) -> Steering:
        from ..guidance.targets import TargetSampler

        return Steering(TargetSampler(pipe.num_labels))


SIDE_LORA = LoRAMethod(
    "side-lora",
    "SIDE, LoRA branch: the model fine-tuned on the surrogate labels with LoRA, sampled one label per image "
    "(guidance scale = classifier-free guidance scale)",
    default_guidance_scale=1.0,
    in_demo=False,  # the demo trains classifiers, not a LoRA model (README "LoRA-SIDE" has its commands)
)
