"""Similarity names, their directions, and scoring every generation's best training match.

Three similarities score a generated image against the training (reference) set:

- ``"l2"``: the RMS L2 distance on ``[0, 1]`` pixels, ``l2(a, b) = sqrt(mean((a - b) ** 2))``.
  *Smaller is more similar.*
- ``"carlini"``: Carlini et al.'s normalized L2 (USENIX Security 2023),
  ``l2(x_hat, x) / (alpha * mean(l2(x_hat, y) for the n training y nearest to x_hat))`` with
  ``alpha = 0.5`` and ``n = 50``; ``n`` is capped at the reference size. *Smaller is more similar.*
- ``"cosine"``: the cosine similarity of L2-normalised feature embeddings (SSCD, DINOv2, CLIP, the
  UNet's own features; see `diffusers_side.labels.features`). *Larger is more similar.*

A feature extractor is not a similarity: it is passed separately (see `diffusers_side.evaluation.evaluate.evaluate`)
and its embeddings are compared with ``"cosine"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import logging

from .nearest_match import COSINE, DEFAULT_CHUNK_SIZE, nearest_neighbors

logger = logging.get_logger(__name__)

PIXEL_SIMILARITIES = ("l2", "carlini")
SIMILARITIES = PIXEL_SIMILARITIES + (COSINE,)

CARLINI_ALPHA = 0.5
CARLINI_NUM_NEIGHBORS = 50



def check_similarity(similarity: str) -> str:
    """Return ``similarity`` if it is one of `SIMILARITIES`.

    Raises:
        `ValueError`: any other value (the message names it and the choices), so that a typo never falls
            back to another similarity.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(
            f"similarity={similarity!r} is not one of {SIMILARITIES}; a feature extractor (unet, pixels, a model) "
            "is passed as feature_extractor= and compared with 'cosine'."
        )
    return similarity


def smaller_is_more_similar(similarity: str) -> bool:
    """True for the distances (``"l2"``, ``"carlini"``), False for cosine similarities."""
    return check_similarity(similarity) in PIXEL_SIMILARITIES


def direction_text(similarity: str) -> str:
    """A short sentence saying which way the similarity points, for reports."""
    return "smaller is more similar" if smaller_is_more_similar(similarity) else "larger is more similar"


def describe_similarity(similarity: str, name: str, alpha: float = CARLINI_ALPHA, num_neighbors: int = 0) -> str:
    """One line for reports: what ``similarity`` measures (``name``: the feature extractor for ``"cosine"``)."""
    descriptions = {
        "l2": "RMS L2 distance on [0, 1] pixels",
        "carlini": f"Carlini et al.'s normalized L2 on [0, 1] pixels, alpha={alpha:g}, n={num_neighbors} nearest",
        COSINE: f"cosine similarity of L2-normalised `{name}` embeddings",
    }
    return descriptions[check_similarity(similarity)]


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


def find_best_matches(
    generated: torch.Tensor,
    reference: torch.Tensor,
    similarity: str = "carlini",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    alpha: float = CARLINI_ALPHA,
    num_neighbors: int = CARLINI_NUM_NEIGHBORS,
    device: str | torch.device | None = None,
    show_progress: bool = True,
) -> Matches:
    """Score every generation against the reference set and keep its best and second-best match.

    Args:
        generated (`torch.Tensor`): ``(N_G, D)`` flattened pixels in ``[0, 1]`` (float or uint8) for
            ``"l2"`` / ``"carlini"``; L2-normalised embeddings for ``"cosine"``.
        reference (`torch.Tensor`): ``(N_train, D)``, same conventions; at least 2 rows.
        similarity (`str`): ``"l2"``, ``"carlini"`` or ``"cosine"``.
        chunk_size (`int`): see [`nearest_neighbors`].
        alpha (`float`), num_neighbors (`int`): Carlini's normalizer; ``num_neighbors`` is capped at
            the reference size (the number used is stored in the result).
        device: where to compute.
        show_progress (`bool`): show a progress bar.

    Returns:
        [`Matches`].
    """
    kind = check_similarity(similarity)
    if kind == COSINE:
        _check_normalised(generated, "generated")
        _check_normalised(reference, "reference")
    if len(reference) < 2:
        raise ValueError(f"The reference set has {len(reference)} image(s); at least 2 are needed for the second-best match.")
    if kind == "carlini":
        if alpha <= 0 or num_neighbors < 2:
            raise ValueError(f"Carlini's normalizer needs alpha > 0 and num_neighbors >= 2; got {alpha} and {num_neighbors}.")
        used = min(num_neighbors, len(reference))
        if used < num_neighbors:
            logger.warning(
                f"The reference has {len(reference)} images: Carlini's normalizer averages {used} neighbours, not {num_neighbors}."
            )
        distances, indices = nearest_neighbors(generated, reference, used, "l2", chunk_size, device, show_progress)
        distances, indices = distances.numpy(), indices.numpy()
        normalized = carlini_normalized_l2(distances[:, :2], distances, alpha)
        normalizer = alpha * distances.mean(axis=1)
        return Matches(indices[:, 0], normalized[:, 0], normalized[:, 1], distances[:, 0], distances[:, 1], used, normalizer)
    scores, indices = nearest_neighbors(generated, reference, 2, "l2" if kind == "l2" else COSINE, chunk_size, device, show_progress)
    scores, indices = scores.numpy(), indices.numpy()
    distances = scores if kind == "l2" else np.sqrt(np.clip(2.0 - 2.0 * scores, 0.0, None))
    return Matches(indices[:, 0], scores[:, 0], scores[:, 1], distances[:, 0], distances[:, 1])


def _check_normalised(embeddings: torch.Tensor, name: str) -> None:
    norms = embeddings.double().norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise ValueError(
            f"The {name} embeddings are not L2-normalised (norms {norms.min():.4g} to {norms.max():.4g}); "
            "cosine similarity expects unit vectors, as `features.embed_images` returns."
        )
