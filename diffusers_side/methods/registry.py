"""The extraction methods: one record per method, read by the CLI, validation, cards, the demo and the engine.

Adding a method is one [`register_method`] call with its record (name, whether and which classifier it
needs, default guidance scale, card description) and, when it samples differently from the plain
`SIDEPipeline` call, its own ``sample`` function.

Example:

```py
>>> from diffusers_side.methods.registry import get_method
>>> get_method("side").default_guidance_scale
1.0
>>> get_method("sidee")
Traceback (most recent call last):
ValueError: method='sidee' is not one of ('synthetic', 'side', 'uncond', 'cond', 'side-lora', 'side-exemplar'); ...
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the registry itself stays light: `side --help` reads it without importing torch
    import PIL.Image
    import torch

    from ..guidance.exemplar import ExemplarPosterior
    from ..pipelines.pipeline_side import SIDEPipeline
    from ..pipelines.pipeline_side_lora import SIDELoRAPipeline


@dataclass
class ShardRequest:
    """What the generation engine asks a method to sample: one shard of images.

    Args:
        seeds: one seed per image.
        generators: one `torch.Generator` per image, seeded with its seed.
        targets: one surrogate condition per image for methods that need a classifier, else ``None``.
        guidance_scale: lambda (0 for unguided methods).
        num_inference_steps: denoising steps.
        exemplars: the exemplar posterior that guides instead of the classifier (``side-exemplar``).
        guidance_window: guide only at timesteps in ``[t_min, t_max]`` (``None``: every step).
        guidance_space: where the classifier reads the sample, ``"xt"`` (the paper) or ``"x0"`` (the predicted
            clean image; see `SIDEPipeline.guide_x0`).
    """

    seeds: list[int]
    generators: list[torch.Generator]
    targets: list[int] | None
    guidance_scale: float
    num_inference_steps: int
    exemplars: ExemplarPosterior | None = None
    guidance_window: tuple[float, float] | None = None
    guidance_space: str = "xt"


SampleFn = Callable[["SIDEPipeline", ShardRequest], "list[PIL.Image.Image]"]


def sample_with_pipeline(pipe: SIDEPipeline, request: ShardRequest) -> list[PIL.Image.Image]:
    """Sample one shard with the `SIDEPipeline` call (classifier guidance when ``request.targets`` is set)."""
    return pipe(
        batch_size=len(request.seeds),
        target=request.targets,
        guidance_scale=request.guidance_scale,
        num_inference_steps=request.num_inference_steps,
        generator=request.generators,
        output_type="pil",
        **variant_options(request),
    ).images


def variant_options(request: ShardRequest) -> dict:
    """The `SIDEPipeline`-only options a request sets (exemplars, guidance window, x0 guidance); other pipelines get none."""
    options = {
        "exemplars": request.exemplars,
        "guidance_window": request.guidance_window,
        "guidance_space": None if request.guidance_space == "xt" else request.guidance_space,
    }
    return {name: value for name, value in options.items() if value is not None}


@dataclass(frozen=True)
class ExtractionMethod:
    """One way of generating candidates.

    Args:
        name: the ``--method`` value, stored in ``generation.json`` and the ``method`` column.
        description: one line for dataset cards.
        needs_classifier: whether it samples with classifier guidance (and draws a target per image).
        needs_exemplars: whether it is guided by the exact posterior of a labelled synthetic set
            (``--exemplars DIR``, the output of ``side label``) instead of a classifier.
        time_dependent: the kind of classifier it needs (``True``: p(y | x_t, t), ``False``: p(y | x));
            ``None`` when it needs none.
        needs_lora: whether it samples a model fine-tuned on the surrogate labels (a `SIDELoRAPipeline` or, with
            its training prompt, a `SIDELoRATextPipeline` from ``side train-lora``; draws a target per image, the
            guidance scale is the classifier-free one).
        default_guidance_scale: lambda when none is given (0 for unguided methods).
        extractable: offered by ``side extract`` and the demo (``False`` for the synthetic set).
        sample: samples one shard; see [`sample_with_pipeline`].
    """

    name: str
    description: str
    needs_classifier: bool = False
    needs_exemplars: bool = False
    time_dependent: bool | None = None
    needs_lora: bool = False
    default_guidance_scale: float = 0.0
    extractable: bool = True
    sample: SampleFn = sample_with_pipeline

    @property
    def guided(self) -> bool:
        """Whether it draws a surrogate condition per image and takes a guidance scale."""
        return self.needs_classifier or self.needs_lora or self.needs_exemplars

    def num_conditions(self, pipe: SIDEPipeline | SIDELoRAPipeline) -> int:
        """The number of surrogate conditions targets are drawn from (the classifier's, or the LoRA model's labels)."""
        return pipe.num_labels if self.needs_lora else pipe.classifier.config.num_classes

    def check_pipeline(self, pipe: SIDEPipeline | SIDELoRAPipeline) -> None:
        """Raise `ValueError` when ``pipe`` is not the kind this method samples, or lacks the classifier it needs."""
        # Imported here, not at the top: the registry imports no torch.
        from ..pipelines.pipeline_side_lora import SIDELoRAPipeline
        from ..pipelines.pipeline_side_lora_text import SIDELoRATextPipeline

        if self.needs_lora != isinstance(pipe, (SIDELoRAPipeline, SIDELoRATextPipeline)):
            if self.needs_lora:
                raise ValueError(
                    f"method={self.name!r} samples a model fine-tuned on the surrogate labels; pass the output folder "
                    "of `side train-lora` as --pipeline."
                )
            raise ValueError(
                f"method={self.name!r} samples the audited model itself, but --pipeline is a LoRA-SIDE folder; pass the "
                "base pipeline (or use --method side-lora)."
            )
        if not self.needs_classifier:
            return
        if pipe.classifier is None:
            raise ValueError(f"method={self.name!r} needs a classifier but the pipeline has none; pass --classifier PATH.")
        if pipe.classifier.config.time_dependent != self.time_dependent:
            wanted, found = ("time-dependent", "time-independent")[:: 1 if self.time_dependent else -1]
            hint = "" if self.time_dependent else (
                "; train one with `training/train_classifier.py --time_independent` and pass it with --classifier"
            )
            raise ValueError(f"method={self.name!r} needs a {wanted} classifier, but this one is {found}{hint}.")


METHODS: dict[str, ExtractionMethod] = {}


def register_method(method: ExtractionMethod) -> ExtractionMethod:
    """Add ``method`` to [`METHODS`]; a name can be registered once."""
    if method.name in METHODS:
        raise ValueError(f"An extraction method named {method.name!r} is already registered.")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> ExtractionMethod:
    """The record of method ``name``.

    Raises:
        `ValueError`: an unknown name (the message lists the registered ones).
    """
    if name not in METHODS:
        raise ValueError(f"method={name!r} is not one of {tuple(METHODS)}; choose one of them.")
    return METHODS[name]


def extraction_method_names() -> tuple[str, ...]:
    """The methods ``side extract`` offers and the demo compares, in registration order."""
    return tuple(name for name, method in METHODS.items() if method.extractable)


def guided_method_names() -> tuple[str, ...]:
    """The methods that take a guidance scale (what ``side sweep`` can sweep)."""
    return tuple(name for name in extraction_method_names() if METHODS[name].guided)


register_method(
    ExtractionMethod("synthetic", "unguided samples used to build surrogate labels", extractable=False)
)
register_method(
    ExtractionMethod(
        "side",
        "SIDE: time-dependent classifier guidance toward one surrogate condition per image",
        needs_classifier=True,
        time_dependent=True,
        default_guidance_scale=1.0,
    )
)
register_method(ExtractionMethod("uncond", "Carlini et al. UnCond: plain unconditional sampling"))
register_method(
    ExtractionMethod(
        "cond",
        "Carlini et al. Cond: guidance by a time-independent classifier",
        needs_classifier=True,
        time_dependent=False,
        default_guidance_scale=1.0,
    )
)
register_method(
    ExtractionMethod(
        "side-lora",
        "SIDE, LoRA branch: the model fine-tuned on the surrogate labels with LoRA, sampled one label per image "
        "(guidance scale = classifier-free guidance scale)",
        needs_lora=True,
        default_guidance_scale=1.0,
    )
)
register_method(
    ExtractionMethod(
        "side-exemplar",
        "SIDE with exemplar (Bayes) guidance: the exact posterior of the noised labelled synthetic set instead of "
        "a trained classifier (not in the paper)",
        needs_exemplars=True,
        # Chosen on the selection seeds of both embedded targets (README "Study"): lambda 10 is at the top of the
        # curve on each (lambda 1 moves x0_hat by E[m | x_t, c] - E[m | x_t] only; larger values commit earlier).
        default_guidance_scale=10.0,
    )
)
