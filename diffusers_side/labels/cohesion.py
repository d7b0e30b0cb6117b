"""The cohesion cut tau (``--cohesion auto``): Otsu's threshold over the clusters' cohesion values.

A memorized image comes back as a cluster of near-duplicates whose cohesion (mean cosine of its members to their
centroid) is near 1; Otsu's rule splits the cohesion values into the two groups of largest between-group variance,
so tau adapts to the model instead of being a constant tuned on one target.
"""

from __future__ import annotations

import numpy as np

MIN_LABELS = 2  # a surrogate classifier needs at least two classes


def otsu_threshold(values: list[float], min_upper: int = MIN_LABELS) -> float:
    """Otsu's threshold of a small set of values, leaving at least ``min_upper`` values above it.

    Among the cuts between distinct sorted values, picks the one maximising the between-group
    variance ``w_low * w_high * (mean_low - mean_high)^2`` and returns the midpoint of the cut.
    With no admissible cut (fewer than ``min_upper + 1`` values, or all equal) it returns the
    smallest value, which keeps everything.

    Example:

    ```py
    >>> otsu_threshold([0.1, 0.15, 0.2, 0.8, 0.9])
    0.5
    ```
    """
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    count = len(ordered)
    if count == 0:
        return float("inf")
    cuts = np.arange(1, count)
    cuts = cuts[(count - cuts >= min_upper) & (ordered[cuts - 1] < ordered[cuts])]
    if len(cuts) == 0:
        return float(ordered[0])
    prefix = np.cumsum(ordered)
    mean_low = prefix[cuts - 1] / cuts
    mean_high = (prefix[-1] - prefix[cuts - 1]) / (count - cuts)
    between = cuts * (count - cuts) * (mean_low - mean_high) ** 2
    best = cuts[int(np.argmax(between))]
    return float((ordered[best - 1] + ordered[best]) / 2)
