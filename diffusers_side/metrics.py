"""The extraction metrics of SIDE: AMS and UMS per band, the 95th-percentile similarity and Gu et al.'s ratio.

- ``AMS(band)``: the fraction of generations whose best training match lies in the band.
- ``UMS(band)``: the distinct training images extracted in the band, over the number of generations.
- Gu et al. (2023): the fraction of generations whose nearest distance is below 1/3 of the second nearest.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .bands import Band, assign_bands
from .similarity import Matches, smaller_is_more_similar

MEMORIZATION_RATIO = 1.0 / 3.0



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


def extraction_metrics(matches: Matches, bands: Sequence[Band], similarity: str) -> dict:
    """AMS, UMS and the summary statistics of one group of generations.

    - ``AMS(band)`` = #generations whose best match lies in the band / N_G.
    - ``UMS(band)`` = #distinct training images that are the best match of some generation whose best
      match lies in the band / N_G. Only the best match counts: one generation extracts at most one
      training image, so ``UMS <= AMS``.

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
        unique_counts[band.name] = int(np.unique(matches.best_index[in_band]).size)
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
