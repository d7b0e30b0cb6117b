"""Rank generations as likely training images, without the training set: near-duplicate groups among the generations.

A memorized training image comes back across seeds (Carlini et al., USENIX Security 2023, extract this way: a
generation with many near-identical copies among the others is flagged as memorized). [`rank_candidates`] looks for
such groups with Carlini's normalized L2 computed *among the generations*:

- ``d_1 <= d_2 <= ...``: RMS L2 distances (``[0, 1]`` pixels) from generation ``x`` to the other generations.
- Neighbour ``m`` closes a near-duplicate group of ``x`` when ``d_m / (alpha * mean(d_{m+1}, ..., d_{m+n})) <
  threshold``: the normalizer is the mean distance to the ``n`` generations *beyond* the group, the analogue of
  Carlini's ``n`` nearest training images (distinct images). Normalizing by the ``n`` nearest, as the evaluation does
  against the training set, would fail here: a group of more than ``n`` copies would normalize itself away.
- ``group_size`` = 1 + the largest such ``m`` (1 when there is none); ``tightness`` = the normalized distance at that
  ``m`` (for a generation without a group, at ``m = 1``: how close it comes to having one). Smaller is tighter.

Generations are ranked by group size (largest first), then tightness (smallest first), then their row, and
deduplicated: a generation that is in the group of a listed candidate, or whose group holds one, joins that
candidate instead of being listed. Every generation is listed or merged, so the list is a full ranking (precision
can be read at any k). Defaults: ``alpha = 0.5`` and ``n = 50`` as Carlini et al.; ``threshold = 0.5``, the edge of the
package's mid band and of `diffusers_side.guidance.targets.DUPLICATE_THRESHOLD`; nothing was chosen on training-set
scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..similarity.measures import CARLINI_ALPHA, CARLINI_NUM_NEIGHBORS, carlini_normalized_l2
from ..similarity.nearest_match import DEFAULT_CHUNK_SIZE, nearest_neighbors

DUPLICATE_THRESHOLD = 0.5
MAX_NEIGHBORS = 256  # neighbours retrieved per generation: groups up to MAX_NEIGHBORS - n are found whole
MIN_GENERATIONS = 3  # a normalizer needs at least one generation beyond the nearest


@dataclass
class CandidateList:
    """The ranked, deduplicated candidates of one set of generations (row ``i`` of each array: rank ``i + 1``).

    Attributes:
        row: ``(K,)`` the candidate's row in the set of generations.
        group_size: ``(K,)`` its near-duplicate group, itself included.
        tightness: ``(K,)`` normalized distance at the group's edge (see the module docstring); smaller is tighter.
        members: per candidate, the rows merged into it (its group's generations not listed before it).
        nearest_row: ``(K,)`` its nearest other generation.
        nearest_distance: ``(K,)`` the RMS L2 distance to it.
        settings: the parameters used (threshold, alpha, num_neighbors, max_neighbors, num_generations).
    """

    row: np.ndarray
    group_size: np.ndarray
    tightness: np.ndarray
    members: list[list[int]]
    nearest_row: np.ndarray
    nearest_distance: np.ndarray
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.row)


def check_candidate_settings(threshold: float, alpha: float, num_neighbors: int, max_neighbors: int) -> None:
    """Raise `ValueError` naming a bad parameter and its valid range."""
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold={threshold!r} must be a finite number > 0 (default {DUPLICATE_THRESHOLD}).")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha={alpha!r} must be a finite number > 0 (Carlini's 0.5).")
    if not isinstance(num_neighbors, int) or num_neighbors < 1:
        raise ValueError(f"num_neighbors={num_neighbors!r} must be a positive integer (Carlini's 50).")
    if not isinstance(max_neighbors, int) or max_neighbors < 2:
        raise ValueError(f"max_neighbors={max_neighbors!r} must be an integer >= 2 (default {MAX_NEIGHBORS}).")


def _neighbors_without_self(rows: torch.Tensor, k: int, chunk_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest *other* generations of every generation: RMS L2 distances and rows, nearest first."""
    distances, indices = nearest_neighbors(rows, rows, k + 1, "l2", chunk_size, device, show_progress=False)
    distances, indices = distances.numpy(), indices.numpy()
    own = indices == np.arange(len(rows))[:, None]
    own[~own.any(axis=1), -1] = True  # more than k exact copies ranked before itself: drop the farthest instead
    keep = ~own
    return distances[keep].reshape(len(rows), k), indices[keep].reshape(len(rows), k)


def used_neighbors(num_neighbors: int, k: int) -> int:
    """``n`` of the normalizer with ``k`` neighbours retrieved: at most half of them, so groups of up to ``k - n`` fit."""
    return max(1, min(num_neighbors, k // 2))


def group_scores(distances: np.ndarray, alpha: float, num_neighbors: int) -> np.ndarray:
    """``(N, M)`` normalized distances ``d_m / (alpha * mean(d_{m+1..m+n}))`` for ``m = 1 .. M`` (see module docstring).

    Args:
        distances: ``(N, k)`` distances to the ``k`` nearest other generations, nearest first.
        alpha (`float`), num_neighbors (`int`): Carlini's normalizer; ``n`` is capped at half of ``k`` (`used_neighbors`).
    """
    k = distances.shape[1]
    n = used_neighbors(num_neighbors, k)
    return np.stack(
        [carlini_normalized_l2(distances[:, m], distances[:, m + 1 : m + 1 + n], alpha) for m in range(k - n)], axis=1
    )


def _deduplicate(order: np.ndarray, groups: list[np.ndarray]) -> tuple[list[int], list[list[int]]]:
    """Walk the ranking; list a generation unless it belongs to a listed candidate's group or its group holds one."""
    owner = np.full(len(groups), -1)
    listed, members = [], []
    for row in order:
        if owner[row] >= 0 or (len(groups[row]) and (owner[groups[row]] == -2).any()):
            continue
        owner[row] = -2  # listed
        new = [int(m) for m in groups[row] if owner[m] == -1]
        owner[new] = len(listed)
        listed.append(int(row))
        members.append(new)
    return listed, members


def rank_candidates(
    rows: torch.Tensor,
    threshold: float = DUPLICATE_THRESHOLD,
    alpha: float = CARLINI_ALPHA,
    num_neighbors: int = CARLINI_NUM_NEIGHBORS,
    max_neighbors: int = MAX_NEIGHBORS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str | torch.device | None = None,
) -> CandidateList:
    """
    Rank generations by the evidence that they copy a training image, using the generations alone.

    Args:
        rows (`torch.Tensor`): ``(N, D)`` flattened pixels in ``[0, 1]`` (float) or ``0..255`` (uint8), ``N >= 3``.
        threshold (`float`): the normalized distance below which a group is closed (default 0.5).
        alpha (`float`), num_neighbors (`int`): Carlini's normalizer (0.5 and 50; ``n`` at most half the neighbours
            retrieved, so a set of fewer than ``2 n + 1`` generations uses fewer).
        max_neighbors (`int`): neighbours retrieved per generation (groups of up to ``max_neighbors - n`` are found).
        chunk_size (`int`), device: as in `diffusers_side.similarity.nearest_match.nearest_neighbors`.

    Returns:
        [`CandidateList`], best candidate first.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_side.candidates.ranking import rank_candidates
    >>> copies = torch.rand(1, 64).repeat(5, 1) + 0.01 * torch.randn(5, 64)
    >>> ranked = rank_candidates(torch.cat([copies, torch.rand(40, 64)]).clamp(0, 1))
    >>> int(ranked.group_size[0]), int(ranked.row[0]) < 5
    (5, True)
    ```
    """
    check_candidate_settings(threshold, alpha, num_neighbors, max_neighbors)
    if rows.ndim != 2 or len(rows) < MIN_GENERATIONS:
        raise ValueError(
            f"Ranking candidates needs a (N, D) set of at least {MIN_GENERATIONS} generations; got shape {tuple(rows.shape)}."
        )
    k = min(len(rows) - 1, max_neighbors)
    distances, neighbors = _neighbors_without_self(rows, k, chunk_size, device)
    scores = group_scores(distances, alpha, num_neighbors)  # (N, M), column m - 1 for neighbour m
    closes = scores < threshold
    last = np.where(closes.any(axis=1), scores.shape[1] - 1 - np.argmax(closes[:, ::-1], axis=1), -1)
    group_size = last + 2
    tightness = scores[np.arange(len(rows)), np.maximum(last, 0)]
    order = np.lexsort((np.arange(len(rows)), tightness, -group_size))
    groups = [neighbors[i, : group_size[i] - 1] for i in range(len(rows))]
    listed, members = _deduplicate(order, groups)
    listed = np.asarray(listed, dtype=np.int64)
    settings = {
        "threshold": threshold, "alpha": alpha, "num_neighbors": used_neighbors(num_neighbors, k), "max_neighbors": max_neighbors,
        "num_generations": len(rows), "similarity": "normalized L2 among the generations (RMS L2 on [0, 1] pixels)",
    }
    return CandidateList(
        listed, group_size[listed], tightness[listed], members, neighbors[listed, 0], distances[listed, 0], settings
    )
