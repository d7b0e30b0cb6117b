"""The guides by name: one `register_guide` line per guidance strategy.

A guide that reads a classifier is offered as a guidance space (``side extract --guidance-space NAME``,
``SIDEPipeline(guidance_space=NAME)``) to every classifier method (side, cond); one that reads the labelled
synthetic set is the exemplar guide. The registry names each class by its import path and imports it only
when a guide is built, so ``side --help`` and argument errors never import torch.

Example:

```py
>>> from diffusers_side.guidance.registry import guidance_spaces, build_guide
>>> guidance_spaces()
('xt', 'x0')
>>> guide = build_guide(classifier=pipe.classifier, space="x0", window=(0, 500))  # doctest: +SKIP
```
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..models.classifier import TimeDependentClassifier
    from .base import Guide
    from .exemplar import ExemplarPosterior

READS = ("classifier", "exemplars")


@dataclass(frozen=True)
class GuideEntry:
    """One registered guide.

    Args:
        name: its name (for a classifier guide, the ``--guidance-space`` value).
        target: ``"module:Class"``; the class is built as ``Class(source, window=window)``.
        reads: ``"classifier"`` (built from a `TimeDependentClassifier`) or ``"exemplars"`` (an `ExemplarPosterior`).
        description: a few words for help texts and error messages.
    """

    name: str
    target: str
    reads: str
    description: str

    def load(self) -> type:
        """The guide class (imported now)."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


GUIDES: dict[str, GuideEntry] = {}


def register_guide(name: str, target: str, reads: str, description: str) -> GuideEntry:
    """Add a guide to [`GUIDES`]; a name can be registered once."""
    if name in GUIDES:
        raise ValueError(f"A guide named {name!r} is already registered.")
    if reads not in READS:
        raise ValueError(f"reads={reads!r} is not one of {READS}.")
    GUIDES[name] = GuideEntry(name, target, reads, description)
    return GUIDES[name]


def guidance_spaces() -> tuple[str, ...]:
    """The names of the classifier guides, in registration order (``--guidance-space`` choices; ``"xt"`` is the paper's)."""
    return tuple(name for name, entry in GUIDES.items() if entry.reads == "classifier")


def check_guidance_space(space: str) -> str:
    """Return ``space`` if it names a classifier guide, else raise `ValueError` naming it and the choices."""
    if space not in guidance_spaces():
        choices = " or ".join(f"{name!r} ({GUIDES[name].description})" for name in guidance_spaces())
        raise ValueError(f"guidance_space={space!r} is not one of {guidance_spaces()}; use {choices}.")
    return space


def build_guide(
    classifier: TimeDependentClassifier | None = None,
    exemplars: ExemplarPosterior | None = None,
    window: tuple[float, float] | None = None,
    space: str = "xt",
) -> Guide | None:
    """The guide that the keyword arguments of `SIDEPipeline.__call__` and the settings of a run describe.

    Args:
        classifier: the classifier a classifier guide reads.
        exemplars: the labelled synthetic set; given, the exemplar guide replaces the classifier's.
        window: ``(t_min, t_max)``, or `None` to guide at every step.
        space: which classifier guide (a name of `guidance_spaces`).

    Returns:
        [`~diffusers_side.guidance.base.Guide`] or `None` when there is nothing to guide with.
    """
    check_guidance_space(space)
    if exemplars is not None:
        if space != "xt":
            raise ValueError(
                f"guidance_space={space!r} guides with a classifier and cannot be combined with exemplars: the exemplar "
                "posterior p(c | x_t) is already exact at every noise level, and at t = 0 it is a hard "
                "nearest-exemplar assignment whose gradient vanishes. Drop exemplars=, or use guidance_space='xt'."
            )
        return GUIDES["exemplar"].load()(exemplars, window=window)
    if classifier is None:
        return None
    return GUIDES[space].load()(classifier, window=window)


register_guide("xt", "diffusers_side.guidance.classifier:ClassifierGuide", "classifier", "the paper: the classifier reads the noisy x_t")
register_guide(
    "x0", "diffusers_side.guidance.clean_image:CleanImageGuide", "classifier", "it reads the predicted clean image"
)
register_guide(
    "exemplar", "diffusers_side.guidance.exemplar:ExemplarGuide", "exemplars", "the exact posterior of the labelled set"
)
