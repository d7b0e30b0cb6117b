"""95 % intervals for the extraction metrics, as the study reports them.

- **AMS** is a binomial proportion (generations whose best match lies in the band, out of N_G): the Wilson score
  interval (`scipy.stats.binomtest(...).proportion_ci(method="wilson")`).
- **UMS** counts *distinct* training images, which no closed form covers: the estimate +- 1.96 bootstrap standard
  errors (`scipy.stats.bootstrap`, generations resampled with replacement). A distinct count shrinks under
  resampling (a resample repeats some generations and drops others), so percentile intervals lie below the estimate;
  the bootstrap is used for the spread only, centred on the estimate (the convention of the earlier study, kept so
  the numbers compare).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000


def wilson_interval(count: int, total: int, confidence: float = CONFIDENCE) -> list[float]:
    """``[count / total, low, high]``: the proportion and its Wilson score interval.

    Example:

    ```py
    >>> from diffusers_side.evaluation.intervals import wilson_interval
    >>> [round(v, 4) for v in wilson_interval(10, 100)]
    [0.1, 0.0552, 0.1744]
    ```
    """
    if total < 1 or not 0 <= count <= total:
        raise ValueError(f"count={count} and total={total}: need 0 <= count <= total and total >= 1.")
    interval = stats.binomtest(int(count), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return [count / total, float(interval.low), float(interval.high)]


def distinct_interval(
    in_band: np.ndarray, best_index: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[float]:
    """``[UMS, low, high]``: distinct training images copied in a band over N_G, +- z bootstrap standard errors.

    Args:
        in_band (`np.ndarray`): per generation, whether its best match lies in the band.
        best_index (`np.ndarray`): per generation, its best training match.
        resamples (`int`): bootstrap resamples of the generations.
        seed (`int`): the bootstrap's random seed (fixed, so a report is reproducible).
        confidence (`float`): 0.95 gives +- 1.96 standard errors.

    Returns:
        `list[float]`: the estimate and the interval (clipped at 0), as fractions of N_G; multiply by N_G for counts.
    """
    in_band, best_index = np.asarray(in_band, dtype=bool), np.asarray(best_index)
    total = len(in_band)
    if total < 1 or len(best_index) != total:
        raise ValueError(f"in_band ({total}) and best_index ({len(best_index)}) must be non-empty and of one length.")
    estimate = np.unique(best_index[in_band]).size / total
    if not in_band.any() or in_band.all() and np.unique(best_index).size == 1:
        return [estimate, estimate, estimate]  # every resample gives the same count

    def distinct(rows: np.ndarray) -> float:
        rows = rows.astype(np.int64)
        return np.unique(best_index[rows][in_band[rows]]).size / total

    result = stats.bootstrap(
        (np.arange(total),), distinct, n_resamples=resamples, vectorized=False, method="percentile",
        rng=np.random.default_rng(seed),
    )
    half = stats.norm.ppf(0.5 + confidence / 2) * float(result.standard_error)
    return [float(estimate), float(max(0.0, estimate - half)), float(estimate + half)]
