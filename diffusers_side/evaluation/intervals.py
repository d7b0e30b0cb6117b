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
    return pooled_distinct_interval([(in_band, best_index)], resamples, seed, confidence)


def pooled_distinct_interval(
    parts: list[tuple[np.ndarray, np.ndarray]], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[float]:
    """`distinct_interval` of several generation sets held together (e.g. guided generations plus the synthetic set
    an attacker already sampled): the distinct training images of their union over their total size, each set
    resampled on its own (a stratified bootstrap: the sets keep their sizes).

    Args:
        parts: ``(in_band, best_index)`` per generation set, as in `distinct_interval`.
        resamples, seed, confidence: as in `distinct_interval`.

    Returns:
        `list[float]`: the estimate and the interval (clipped at 0), as fractions of the total number of generations.

    Example:

    ```py
    >>> import numpy as np
    >>> from diffusers_side.evaluation.intervals import pooled_distinct_interval
    >>> guided = (np.array([True, True, False]), np.array([0, 1, 2]))
    >>> synthetic = (np.array([True, False]), np.array([1, 3]))
    >>> pooled_distinct_interval([guided, synthetic], resamples=50)[0]  # images 0 and 1, out of 5 generations
    0.4
    ```
    """
    parts = [(np.asarray(in_band, dtype=bool), np.asarray(best)) for in_band, best in parts]
    if not parts or any(len(in_band) < 1 or len(best) != len(in_band) for in_band, best in parts):
        sizes = [(len(in_band), len(best)) for in_band, best in parts]
        raise ValueError(f"every in_band and best_index must be non-empty and of one length; got (in_band, best) sizes {sizes}.")
    in_band = np.concatenate([p[0] for p in parts])
    best_index = np.concatenate([p[1] for p in parts])
    total = len(in_band)
    estimate = np.unique(best_index[in_band]).size / total
    if not in_band.any() or in_band.all() and np.unique(best_index).size == 1:
        return [estimate, estimate, estimate]  # every resample gives the same count
    offsets = np.cumsum([0] + [len(p[0]) for p in parts])[:-1]

    def distinct(*rows: np.ndarray) -> float:
        rows = np.concatenate([r.astype(np.int64) + offset for r, offset in zip(rows, offsets)])
        return np.unique(best_index[rows][in_band[rows]]).size / total

    result = stats.bootstrap(
        tuple(np.arange(len(p[0])) for p in parts), distinct, n_resamples=resamples, vectorized=False,
        method="percentile", paired=False, rng=np.random.default_rng(seed),
    )
    half = stats.norm.ppf(0.5 + confidence / 2) * float(result.standard_error)
    return [float(estimate), float(max(0.0, estimate - half)), float(estimate + half)]
