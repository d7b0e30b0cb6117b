"""What an extraction method is: [`ExtractionMethod`], the base every method (one file each) derives from.

A method owns its behaviour: which settings it takes and its default lambda (`validate`,
`resolve_guidance_scale`), which pipeline it samples (`check_pipeline`), what steers it (`steering`: its guide
and its target sampler), what is fingerprinted for a resume (`fingerprinted`), and what it reads from the
earlier stages of an audit (`audit_inputs`). The CLI, the engine, the demo and the settings ask it.

This module imports no torch (``side --help`` reads the methods); what a method needs at run time it imports
when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable

if TYPE_CHECKING:
    import PIL.Image
    import torch

    from ..generation.settings import GenerationSettings
    from ..guidance.base import Guide
    from ..guidance.targets import TargetSampler
    from ..pipelines.pipeline_side import SIDEPipeline

# The guidance and sampling options of a run: name -> (value when unused, command-line flag).
GUIDANCE_OPTIONS = {
    "exemplars": (None, "--exemplars"),
    "target_selection": ("uniform", "--target-selection"),
    "guidance_window": (None, "--guidance-window"),
    "guidance_space": ("xt", "--guidance-space"),
    "restart_strength": (0.0, "--restart-strength"),
}
# Every method that samples the audited model with `SIDEPipeline` takes it (`ExtractionMethod.accepts`).
SAMPLER_OPTIONS = frozenset({"restart_strength"})


@dataclass
class ShardRequest:
    """What the generation engine asks a method to sample: one shard of images.

    Args:
        seeds: one seed per image.
        generators: one `torch.Generator` per image, seeded with its seed.
        targets: one surrogate condition per image for guided methods, else ``None``.
        guidance_scale: lambda (0 for unguided methods).
        num_inference_steps: denoising steps.
        guide: the guide of a `SIDEPipeline` method (`None`: the pipeline's plain call).
        restart_strength: the fraction of the chain re-run after re-noising each sample (0: none).
    """

    seeds: list[int]
    generators: list[torch.Generator]
    targets: list[int] | None
    guidance_scale: float
    num_inference_steps: int
    guide: Guide | None = None
    restart_strength: float = 0.0


SampleFn = Callable[["SIDEPipeline", ShardRequest], "list[PIL.Image.Image]"]


def sample_with_pipeline(pipe, request: ShardRequest) -> list[PIL.Image.Image]:
    """Sample one shard with the pipeline's call (its guide, if the request has one)."""
    return pipe(
        batch_size=len(request.seeds),
        target=request.targets,
        guidance_scale=request.guidance_scale,
        num_inference_steps=request.num_inference_steps,
        generator=request.generators,
        output_type="pil",
        **({} if request.guide is None else {"guide": request.guide}),
        **({"restart_strength": request.restart_strength} if request.restart_strength else {}),
    ).images


@dataclass
class Steering:
    """What steers a guided run, prepared once per run: the target sampler and the guide (`None` for a model
    conditioned on the label itself)."""

    targets: TargetSampler
    guide: Guide | None = None


@dataclass(frozen=True)
class AuditArtefacts:
    """What the earlier stages of an audit (``side demo``) produced, for a method to take its inputs from.

    Args:
        labels: the output folder of ``side label``.
        classifiers: the trained classifier folders, by ``time_dependent``.
    """

    labels: Path
    classifiers: dict[bool, Path]


@dataclass(frozen=True)
class ExtractionMethod:
    """
    One way of generating candidates. This base class samples the audited model without guidance.

    Args:
        name: the ``--method`` value, stored in ``generation.json`` and the ``method`` column.
        description: one line for dataset cards and help texts.
        default_guidance_scale: lambda when none is given.
        extractable: offered by ``side extract`` and the demo (``False`` for the synthetic set).
        in_demo: extracted by ``side demo`` (which trains classifiers but no LoRA model).
        sample: samples one shard; see [`sample_with_pipeline`].
    """

    name: str
    description: str
    default_guidance_scale: float = 0.0
    extractable: bool = True
    in_demo: bool = True
    sample: SampleFn = sample_with_pipeline

    guided: ClassVar[bool] = False  # draws a surrogate condition per image and takes a guidance scale
    # The classifier it is guided by: None (none), True (time-dependent, p(c | x_t, t)) or False (time-independent).
    time_dependent: ClassVar[bool | None] = None
    scale_name: ClassVar[str] = "lambda"

    def resolve_guidance_scale(self, requested: float | None = None) -> float:
        """Lambda for a requested one: the default when `None`; unguided methods sample at 0 and refuse any other."""
        if self.guided:
            return self.default_guidance_scale if requested is None else float(requested)
        if requested:
            raise ValueError(
                f"method={self.name!r} samples without guidance but guidance_scale={requested}; use a guided --method for "
                f"guided sampling, or drop --guidance-scale {requested}."
            )
        return 0.0

    def accepts(self, option: str, value) -> bool:
        """Whether ``value`` of the setting ``option`` (a key of `GUIDANCE_OPTIONS`) applies to this method: here the
        sampler options (`SAMPLER_OPTIONS`), for an extraction; the synthetic set stays the plain sample it is."""
        return option in SAMPLER_OPTIONS and self.extractable

    def refusal(self, option: str, value) -> str:
        """Why ``option=value`` does not apply (shown in the error)."""
        if option in SAMPLER_OPTIONS:
            return "the synthetic set is the plain sample the surrogate labels are built from"
        return "it samples without guidance"

    def validate(self, settings: GenerationSettings, methods: Iterable[ExtractionMethod] = ()) -> None:
        """Raise `ValueError` naming the setting and the fix when ``settings`` do not suit this method.

        Args:
            settings: the run's settings (``settings.method`` is this method).
            methods: every registered method, to name the ones a refused setting applies to.
        """
        self.resolve_guidance_scale(settings.guidance_scale)
        for option, (unused, flag) in GUIDANCE_OPTIONS.items():
            value = getattr(settings, option)
            if value == unused or self.accepts(option, value):
                continue
            others = [method.name for method in methods if method.accepts(option, value)]
            text = ":".join(f"{t:g}" for t in value) if isinstance(value, list) else value
            raise ValueError(
                f"{option}={value!r} only applies to method={_either([repr(name) for name in others])}, not {self.name!r} "
                f"({self.refusal(option, value)}); drop {flag} {text} or use --method {_either(others)}."
            )

    def check_pipeline(self, pipe) -> None:
        """Raise `ValueError` when ``pipe`` is not the kind of pipeline this method samples."""
        from ..pipelines.pipeline_side import SIDEPipeline

        if not isinstance(pipe, SIDEPipeline):
            raise ValueError(
                f"method={self.name!r} samples the audited model itself, but --pipeline is a LoRA-SIDE folder; pass the "
                "base pipeline (or use --method side-lora)."
            )

    def steering(self, pipe, settings: GenerationSettings) -> Steering | None:
        """The guide and target sampler of a run, loaded once, its inputs checked against ``pipe`` (`None`: unguided)."""
        return None

    def fingerprinted(self, pipe) -> dict[str, torch.nn.Module | None]:
        """The modules whose weights fingerprints ``generation.json`` records, by field (a resume with other weights is
        refused): the audited UNet, and no classifier."""
        return {"model_fingerprint": pipe.unet, "classifier_fingerprint": None}

    def audit_inputs(self, artefacts: AuditArtefacts) -> dict[str, str]:
        """The settings this method takes from an audit's earlier stages (e.g. its classifier folder)."""
        return {}

    def help_text(self) -> str:
        """``description (default lambda L)`` for help texts."""
        default = f"default {self.scale_name} {self.default_guidance_scale:g}" if self.guided else "unguided"
        return f"{self.description} ({default})"


def _either(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c`` (``none`` for no name)."""
    if not names:
        return "none"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
