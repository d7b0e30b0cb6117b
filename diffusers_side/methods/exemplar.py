"""SIDE with exemplar (Bayes) guidance: the exact posterior of the noised labelled synthetic set replaces the
trained classifier (`diffusers_side.guidance.exemplar`; not in the paper)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import AuditArtefacts, ExtractionMethod, Steering


@dataclass(frozen=True)
class ExemplarMethod(ExtractionMethod):
    """Guidance by the exemplar posterior of ``exemplars`` (the output folder of ``side label``)."""

    guided: ClassVar[bool] = True
    OPTIONS: ClassVar[frozenset[str]] = frozenset({"exemplars", "target_selection", "guidance_window"})

    def accepts(self, option: str, value) -> bool:
        return option in self.OPTIONS or super().accepts(option, value)

    def refusal(self, option: str, value) -> str:
        return "the exemplar posterior is already exact at every noise level"

    def validate(self, settings, methods=()) -> None:
        super().validate(settings, methods)
        if settings.exemplars is None:
            raise ValueError(f"method={self.name!r} needs exemplars=DIR (--exemplars, the output of `side label`).")

    def steering(self, pipe, settings) -> Steering:
        from ..guidance.exemplar import ExemplarGuide, ExemplarPosterior
        from ..guidance.targets import READS_SYNTHETIC, TargetSampler, duplicate_fraction
        from ..labels.surrogate_labels import SurrogateLabels

        labels = SurrogateLabels.load(settings.exemplars)
        exemplars = ExemplarPosterior.from_labelled_set(settings.exemplars, num_classes=labels.num_labels)
        # a latent target is guided on latents: its codec encodes the (pixel) labelled set once, here
        guide = ExemplarGuide(exemplars.encoded(pipe.codec), window=settings.guidance_window)
        guide.check(pipe, pipe.sample_shape, settings.num_inference_steps if settings.guidance_scale > 0 else None)
        duplicates = None
        if settings.target_selection in READS_SYNTHETIC:
            duplicates = duplicate_fraction(exemplars.images.view(-1, *exemplars.image_shape), exemplars.labels, labels.num_labels)
        cohesion = [labels.cohesion[k] for k in labels.kept_cluster_ids]
        targets = TargetSampler.from_selection(
            settings.target_selection, exemplars.num_classes, cohesion, labels.resolved_cohesion_threshold, duplicates
        )
        return Steering(targets, guide)

    def audit_inputs(self, artefacts: AuditArtefacts) -> dict[str, str]:
        return {"exemplars": str(artefacts.labels)}


SIDE_EXEMPLAR = ExemplarMethod(
    "side-exemplar",
    "SIDE with exemplar (Bayes) guidance: the exact posterior of the noised labelled synthetic set instead of "
    "a trained classifier (not in the paper)",
    # Chosen on the selection seeds of both embedded targets (README "Study"): lambda 10 is at the top of the
    # curve on each (lambda 1 moves x0_hat by E[m | x_t, c] - E[m | x_t] only; larger values commit earlier).
    default_guidance_scale=10.0,
)
