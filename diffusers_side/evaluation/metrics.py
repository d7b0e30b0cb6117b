"""The extraction metrics of SIDE: AMS and UMS per band, the 95th-percentile similarity and Gu et al.'s ratio.

- ``AMS(band)``: the fraction of generations whose best training match lies in the band.
- ``UMS(band)``: the distinct training images extracted in the band, over the number of generations;
  counted from best matches only (``"best"``, the default) or from every in-band pair (``"pairs"``, the
  paper's Eqs. 8-9). See `UMS_COUNTINGS`.
- Gu et al. (2023): the fraction of generations whose nearest distance is below 1/3 of the second nearest.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..similarity.measures import Matches, get_similarity, smaller_is_more_similar
from ..similarity.nearest_match import DEFAULT_CHUNK_SIZE, keys_in_bands
from .bands import Band, assign_bands

MEMORIZATION_RATIO = 1.0 / 3.0

# How UMS counts a training image as extracted in a band, and why "best" is the default.
UMS_COUNTINGS: dict[str, str] = {
    "best": (
        "UMS(band): distinct training images that are the best match of a generation whose best match lies in "
        "the band, over N_G; a generation extracts at most one training image, so UMS <= AMS."
    ),
    "pairs": (
        "UMS(band): distinct training images j with gamma(x_i, x_j) in the band for some generation i, over N_G; "
        "every in-band pair counts, as in the SIDE paper (Eqs. 8-9), so UMS can exceed AMS."
    ),
}
DEFAULT_UMS = "best"
UMS_DEFAULT_REASON = (
    "'best' is the default because it credits each generation with the one training image it copies: with "
    "'pairs' a generation that copies image A also counts every other training image that lies within the band "
    "of it (near-duplicates of A, and many images in the loosest band), which measures the neighbourhood of A "
    "rather than extraction. Use --ums pairs (ums='pairs') for the paper's count."
)



def memorization_ratio(nearest_distance: np.ndarray, second_distance: np.ndarray, ratio: float = MEMORIZATION_RATIO) -> float:
    """Gu et al. (2023): the fraction of generations whose nearest distance is < ``ratio`` x the second nearest."""
    nearest_distance = np.asarray(nearest_distance, dtype=np.float64)
    if nearest_distance.size == 0:
        raise ValueError("No generations: the memorization ratio of an empty set is undefined.")
    return float(np.mean(nearest_distance < ratio * np.asarray(second_distance, dtype=np.float64)))


def similarity_percentile(scores: np.ndarray, similarity: str, percentile: float = 95.0) -> float:
    """The ``percentile``-th percentile of best-match *similarity*, whatever the direction.

    For cosine it is the plain percentile (the paper's "95th percentile SSCD"); for distances it is
    the ``100 - percentile``-th percentile of the distance, i.e. the value that only the most similar
    ``100 - percentile`` % of generations beat.
    """
    position = 100.0 - percentile if smaller_is_more_similar(similarity) else percentile
    return float(np.percentile(np.asarray(scores, dtype=np.float64), position))


def check_ums(ums: str) -> str:
    """Return ``ums`` if it is one of `UMS_COUNTINGS` (``"best"``, ``"pairs"``); raise `ValueError` otherwise."""
    if ums not in UMS_COUNTINGS:
        raise ValueError(f"ums={ums!r} is not one of {tuple(UMS_COUNTINGS)}; use 'best' (default) or 'pairs' (the paper's).")
    return ums


def training_images_in_bands(
    generated: torch.Tensor,
    reference: torch.Tensor,
    bands: Sequence[Band],
    similarity: str,
    matches: Matches,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """For UMS over all pairs: which training images lie in each band of at least one generation.

    Args:
        generated (`torch.Tensor`), reference (`torch.Tensor`): the rows given to
            `diffusers_side.similarity.measures.find_best_matches` (pixels, or L2-normalised embeddings for cosine).
        bands (sequence of `Band`): the bands, sorted by their edges (the last one includes its upper edge).
        similarity (`str`): ``"l2"``, ``"carlini"`` or ``"cosine"``.
        matches ([`Matches`]): the generations' best matches; for ``"carlini"`` their ``normalizer`` scales
            every pair score, exactly as for the best match.
        chunk_size (`int`), device: as for the nearest-match search (same memory bound).

    Returns:
        `np.ndarray`: ``(len(bands), N_train)`` booleans, including every best match in its band.
    """
    chosen = get_similarity(similarity)
    intervals = [(band.low, band.high, position == len(bands) - 1) for position, band in enumerate(bands)]
    scale = torch.from_numpy(matches.normalizer) if chosen.normalized else None
    metric = chosen.pair_metric
    hits = keys_in_bands(generated, reference, intervals, metric, scale, chunk_size, device, show_progress=False).numpy()
    assigned = assign_bands(matches.score, bands)
    for position in range(len(bands)):  # exact best-match scores settle float32 rounding at the edges
        hits[position, matches.best_index[assigned == position]] = True
    return hits


def extraction_metrics(
    matches: Matches, bands: Sequence[Band], similarity: str, pair_hits: np.ndarray | None = None
) -> dict:
    """AMS, UMS and the summary statistics of one group of generations.

    - ``AMS(band)`` = #generations whose best match lies in the band / N_G.
    - ``UMS(band)`` = #distinct training images extracted in the band / N_G, where extracted means
      (``pair_hits`` not given, `UMS_COUNTINGS` ``"best"``) the best match of some generation whose best
      match lies in the band, so ``UMS <= AMS``; or (``pair_hits`` given, ``"pairs"``) in the band of some
      generation, every pair counting.

    Args:
        matches ([`Matches`]), bands (sequence of `Band`), similarity (`str`): the group's best matches.
        pair_hits (`np.ndarray`, *optional*): ``(len(bands), N_train)`` from [`training_images_in_bands`],
            for UMS over all pairs.

    Returns:
        `dict` with ``num_generations``, per band ``ams``, ``ums``, ``counts`` and ``unique_counts``
        (keyed by band name), ``p95_similarity`` (see [`similarity_percentile`]), raw ``percentiles``
        (5, 50, 95) of the best-match score, and ``memorization_ratio``.
    """
    num_generations = len(matches.score)
    if num_generations == 0:
        raise ValueError("No generations to score: the group is empty.")
    assigned = assign_bands(matches.score, bands)
    counts, unique_counts = {}, {}
    for position, band in enumerate(bands):
        in_band = assigned == position
        counts[band.name] = int(in_band.sum())
        if pair_hits is None:
            unique_counts[band.name] = int(np.unique(matches.best_index[in_band]).size)
        else:
            unique_counts[band.name] = int(pair_hits[position].sum())
    return {
        "num_generations": num_generations,
        "ams": {name: count / num_generations for name, count in counts.items()},
        "ums": {name: count / num_generations for name, count in unique_counts.items()},
        "counts": counts,
        "unique_counts": unique_counts,
        "p95_similarity": similarity_percentile(matches.score, similarity),
        "percentiles": {str(p): float(np.percentile(matches.score, p)) for p in (5, 50, 95)},
        "memorization_ratio": memorization_ratio(matches.nearest_distance, matches.second_distance),
    }
