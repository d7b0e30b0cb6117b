"""How each generation's target surrogate condition is drawn (``side extract --target-selection``).

- ``uniform``: uniformly over the K' kept clusters (the SIDE paper);
- ``weighted``: with probability proportional to the cluster's cohesion minus the cut tau (tight
  clusters, which tend to be memorized modes, more often);
- ``topF`` (e.g. ``top0.2``): uniformly over the most cohesive fraction F of the kept clusters;
- ``duplicates``: with probability proportional to the fraction of the cluster's synthetic images that
  have a near-duplicate in the synthetic set (Carlini et al.'s normalized L2 < 0.5 *within* the
  synthetic set): memorized images come back several times. Needs the labelled synthetic images;
- ``novel``: uniformly over the clusters none of whose synthetic images has such a near-duplicate: the
  images an attacker does not already hold as a near-duplicate group of the synthetic set (coverage: the
  guided budget goes where plain sampling has not yet shown a copy). Needs the labelled synthetic images.

None of them reads the training set. Every non-uniform choice is a deviation from the paper.
A [`TargetSampler`] draws each image's target from the image's own seed, so an image regenerates alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..similarity.measures import CARLINI_ALPHA, CARLINI_NUM_NEIGHBORS
from ..utils.arg_types import NAMED_SELECTIONS, READS_SYNTHETIC

TARGET_SELECTIONS = ("uniform", "weighted", "topF", "duplicates", "novel")

DUPLICATE_THRESHOLD = 0.5


def check_target_selection(selection: str) -> str:
    """Return ``selection`` if valid, else raise `ValueError` naming it and the choices."""
    if selection in NAMED_SELECTIONS:
        return selection
    if selection.startswith("top"):
        try:
            fraction = float(selection[3:])
        except ValueError:
            fraction = -1.0
        if 0 < fraction <= 1:
            return selection
    raise ValueError(
        f"target selection {selection!r} is not one of {', '.join(NAMED_SELECTIONS)} or topF with 0 < F <= 1 "
        "(e.g. top0.2)."
    )


def duplicate_fraction(images: torch.Tensor, labels: torch.Tensor, num_labels: int) -> np.ndarray:
    """Per label, the fraction of its images whose nearest *other* image scores below `DUPLICATE_THRESHOLD`.

    The score is Carlini's normalized L2 (nearest distance / (0.5 x mean of the 50 nearest)), computed
    within the image set itself. Images in ``[-1, 1]``, ``(N, C, H, W)``; labels ``(N,)``.
    """
    rows = (images.flatten(1).double() + 1) / 2
    distances = torch.cdist(rows, rows) / rows.shape[1] ** 0.5
    distances.fill_diagonal_(float("inf"))
    nearest = distances.sort(dim=1).values[:, : min(CARLINI_NUM_NEIGHBORS, len(rows) - 1)]
    scores = nearest[:, 0] / (CARLINI_ALPHA * nearest.mean(dim=1))
    duplicate = (scores < DUPLICATE_THRESHOLD).double()
    counts = torch.bincount(labels, minlength=num_labels).clamp(min=1)
    return (torch.zeros(num_labels, dtype=torch.float64).index_add_(0, labels, duplicate) / counts).numpy()


def target_probabilities(
    selection: str, cohesion: list[float], cohesion_threshold: float, duplicates: np.ndarray | None = None
) -> np.ndarray | None:
    """
    The probability of each surrogate condition being a generation's target (``None`` for ``uniform``).

    Args:
        selection: one of `TARGET_SELECTIONS` (``topF`` spelled with its fraction, e.g. ``top0.2``).
        cohesion: the cohesion of each kept cluster, in label order.
        cohesion_threshold: the tau that was applied.
        duplicates: `duplicate_fraction` of each label (only for ``duplicates`` and ``novel``).

    Returns:
        `np.ndarray` of K' probabilities, or ``None`` for the paper's uniform draw.

    Example:

    ```py
    >>> from diffusers_side.guidance.targets import target_probabilities
    >>> target_probabilities("top0.5", [0.9, 0.95, 0.8, 0.99], 0.8).tolist()
    [0.0, 0.5, 0.0, 0.5]
    ```
    """
    check_target_selection(selection)
    cohesion = np.asarray(cohesion, dtype=np.float64)
    if selection == "uniform":
        return None
    if selection == "weighted":
        weights = cohesion - cohesion_threshold + 1e-6
    elif selection in READS_SYNTHETIC:
        if duplicates is None:
            raise ValueError(f"target selection {selection!r} needs the labelled synthetic images; pass --exemplars DIR.")
        duplicates = np.asarray(duplicates, dtype=np.float64)
        weights = duplicates if selection == "duplicates" else (duplicates == 0).astype(np.float64)
        if weights.sum() == 0:
            reason = "no synthetic image has" if selection == "duplicates" else "every cluster holds"
            raise ValueError(
                f"target selection {selection!r}: {reason} a near-duplicate in the synthetic set; "
                "use uniform or weighted, or synthesize more images."
            )
    else:
        keep = max(1, round(float(selection[3:]) * len(cohesion)))
        weights = np.zeros_like(cohesion)
        weights[np.argsort(-cohesion, kind="stable")[:keep]] = 1.0
    return weights / weights.sum()


def image_target(seed: int, num_classes: int, probabilities: np.ndarray | None = None) -> int:
    """The surrogate condition of an image, drawn from its own seed (independent of its noise).

    Uniform over the ``num_classes`` conditions (the paper) unless ``probabilities`` are given
    (see `target_probabilities`).
    """
    if probabilities is None:
        return int(np.random.default_rng(seed).integers(num_classes))
    return int(np.random.default_rng(seed).choice(num_classes, p=probabilities))


@dataclass
class TargetSampler:
    """
    Draws the target surrogate condition of each image of a run from the image's seed.

    Args:
        num_conditions: K', the number of surrogate conditions.
        probabilities: the probability of each (`target_probabilities`); ``None`` draws uniformly (the paper).

    Example:

    ```py
    >>> from diffusers_side.guidance.targets import TargetSampler
    >>> sampler = TargetSampler.from_selection("top0.5", 4, cohesion=[0.9, 0.95, 0.8, 0.99], cohesion_threshold=0.8)
    >>> {sampler.draw(seed) for seed in range(50)}
    {1, 3}
    ```
    """

    num_conditions: int
    probabilities: np.ndarray | None = None

    @classmethod
    def from_selection(
        cls,
        selection: str,
        num_conditions: int,
        cohesion: list[float] | None = None,
        cohesion_threshold: float | None = None,
        duplicates: np.ndarray | None = None,
    ) -> "TargetSampler":
        """The sampler of a ``--target-selection`` (cohesion and tau are only read by the non-uniform ones)."""
        cohesion = cohesion or [0.0] * num_conditions
        probabilities = target_probabilities(selection, cohesion, cohesion_threshold or 0.0, duplicates)
        return cls(num_conditions, probabilities)

    def draw(self, seed: int) -> int:
        """The target of the image with seed ``seed``."""
        return image_target(seed, self.num_conditions, self.probabilities)
