"""What a similarity returns (every generation's best and second-best training match) and the pixel distances the
built-in similarities share: RMS L2 and Carlini et al.'s normalized L2."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CARLINI_ALPHA = 0.5
CARLINI_NUM_NEIGHBORS = 50


def rms_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS L2 distance ``sqrt(mean((a - b) ** 2))`` between matching rows of ``a`` and ``b`` (over all but dim 0)."""
    return (a.double() - b.double()).flatten(1).pow(2).mean(dim=1).sqrt()


def carlini_normalized_l2(
    distance: np.ndarray | torch.Tensor, neighbor_distances: np.ndarray | torch.Tensor, alpha: float = CARLINI_ALPHA
) -> np.ndarray:
    """Carlini et al.'s normalized L2: ``distance / (alpha * mean(neighbor_distances))`` per row.

    Args:
        distance: ``(N,)`` or ``(N, m)`` RMS L2 distances to the training image(s) being scored.
        neighbor_distances: ``(N, n)`` RMS L2 distances to the ``n`` nearest training images.
        alpha (`float`, defaults to 0.5): the normalizer's scale.

    Returns:
        `np.ndarray`: the normalized distances. Where all ``n`` neighbours are exact copies the
        normalizer is 0 and the result is defined as 0 (an exact copy is maximally similar).
    """
    distance = np.asarray(distance, dtype=np.float64)
    normalizer = alpha * np.asarray(neighbor_distances, dtype=np.float64).mean(axis=1)
    if distance.ndim == 2:
        normalizer = normalizer[:, None]
    normalizer = np.broadcast_to(normalizer, distance.shape)
    return np.divide(distance, normalizer, out=np.zeros_like(distance), where=normalizer > 0)


@dataclass
class Matches:
    """The best training match of every generation.

    Attributes:
        best_index: ``(N_G,)`` index of the best match in the reference set.
        score: ``(N_G,)`` its similarity (RMS L2, normalized L2 or cosine).
        second_score: ``(N_G,)`` the similarity of the second-best match.
        nearest_distance: ``(N_G,)`` the distance to the best match used by Gu et al.'s ratio: RMS L2
            on pixels for ``"l2"`` / ``"carlini"``, the embedding L2 ``sqrt(2 - 2 cos)`` for cosine.
        second_distance: ``(N_G,)`` the same distance to the second-best match.
        num_neighbors: how many neighbours the Carlini normalizer averaged (0 for other similarities).
        normalizer: ``(N_G,)`` Carlini's normalizer ``alpha * mean(distance to the n nearest)`` of every
            generation (``None`` for other similarities): the scale of all its pair scores.
    """

    best_index: np.ndarray
    score: np.ndarray
    second_score: np.ndarray
    nearest_distance: np.ndarray
    second_distance: np.ndarray
    num_neighbors: int = 0
    normalizer: np.ndarray | None = None

    def subset(self, mask: np.ndarray) -> "Matches":
        """The matches of the generations selected by a boolean mask (or index array)."""
        return Matches(
            self.best_index[mask],
            self.score[mask],
            self.second_score[mask],
            self.nearest_distance[mask],
            self.second_distance[mask],
            self.num_neighbors,
            None if self.normalizer is None else self.normalizer[mask],
        )
