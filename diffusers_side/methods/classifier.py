"""Classifier guidance: SIDE (a time-dependent classifier p(c | x_t, t), the paper) and Carlini et al.'s Cond
(a time-independent one, p(c | x)). The guide is chosen by ``guidance_space`` among the classifier guides of
`diffusers_side.guidance.registry` (``xt``: the paper; ``x0``: the predicted clean image)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import AuditArtefacts, ExtractionMethod, Steering


@dataclass(frozen=True)
class ClassifierMethod(ExtractionMethod):
    """
    Guidance by the pipeline's classifier (``--classifier`` replaces it), toward one surrogate condition per image.

    Args:
        time_dependent: the kind of classifier it needs (``True``: p(c | x_t, t), ``False``: p(c | x)).
        (and the fields of [`ExtractionMethod`])
    """

    time_dependent: bool = True

    guided: ClassVar[bool] = True
    OPTIONS: ClassVar[frozenset[str]] = frozenset({"target_selection", "guidance_window", "guidance_space"})

    def accepts(self, option: str, value) -> bool:
        from ..guidance.targets import READS_SYNTHETIC

        if option not in self.OPTIONS:
            return super().accepts(option, value)
        return not (option == "target_selection" and value in READS_SYNTHETIC)

    def refusal(self, option: str, value) -> str:
        if option == "target_selection":
            return f"{value!r} reads the labelled synthetic images, which a classifier method does not load"
        return "it guides with a classifier"

    def validate(self, settings, methods=()) -> None:
        from ..guidance.registry import check_guidance_space

        super().validate(settings, methods)
        check_guidance_space(settings.guidance_space)

    def check_pipeline(self, pipe) -> None:
        super().check_pipeline(pipe)
        if pipe.classifier is None:
            raise ValueError(f"method={self.name!r} needs a classifier but the pipeline has none; pass --classifier PATH.")
        if pipe.classifier.config.time_dependent != self.time_dependent:
            wanted, found = ("time-dependent", "time-independent")[:: 1 if self.time_dependent else -1]
            hint = "" if self.time_dependent else (
                "; train one with `training/train_classifier.py --time_independent` and pass it with --classifier"
            )
            raise ValueError(f"method={self.name!r} needs a {wanted} classifier, but this one is {found}{hint}.")

    def steering(self, pipe, settings) -> Steering:
        from ..guidance.registry import build_guide
        from ..guidance.targets import TargetSampler

        guide = build_guide(pipe.classifier, window=settings.guidance_window, space=settings.guidance_space)
        guide.check(pipe, pipe.sample_shape, settings.num_inference_steps if settings.guidance_scale > 0 else None)
        info = pipe.classifier.config.label_info or {}
        cohesion, threshold = info.get("kept_cohesion"), info.get("resolved_cohesion_threshold")
        if settings.target_selection != "uniform" and (cohesion is None or threshold is None):
            raise ValueError(
                f"target_selection={settings.target_selection!r} needs the clusters' cohesion, but this classifier's "
                "config records none (train it on the output of `side label`)."
            )
        return Steering(TargetSampler.from_selection(settings.target_selection, guide.num_conditions, cohesion, threshold), guide)

    def fingerprinted(self, pipe) -> dict:
        return {**super().fingerprinted(pipe), "classifier_fingerprint": pipe.classifier}

    def audit_inputs(self, artefacts: AuditArtefacts) -> dict[str, str]:
        return {"classifier": str(artefacts.classifiers[self.time_dependent])}


SIDE = ClassifierMethod(
    "side", "SIDE: time-dependent classifier guidance toward one surrogate condition per image", default_guidance_scale=1.0
)
COND = ClassifierMethod(
    "cond", "Carlini et al. Cond: guidance by a time-independent classifier", default_guidance_scale=1.0, time_dependent=False
)
