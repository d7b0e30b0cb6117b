"""Similarity bands: intervals of the best-match score in which AMS and UMS are counted.

Bands are intervals of the similarity score, ``[low, high)``; the band with the largest edges also
includes its upper edge (so an exact copy with cosine 1.0 is counted in ``[0.6, 1.0]``). The names
(low / mid / high) are similarity levels, not numeric positions: for distances the *high* band has
the *smallest* edges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..similarity.measures import COSINE, check_similarity, smaller_is_more_similar


@dataclass(frozen=True)
class Band:
    """One similarity band: the scores in ``[low, high)`` (``[low, high]`` for the last band)."""

    name: str
    low: float
    high: float

    def to_dict(self) -> dict:
        """The band as ``{"name", "low", "high"}`` (as stored in reports)."""
        return asdict(self)


# Default bands per similarity, sorted by their edges. See `BAND_RATIONALE` for where they come from.
DEFAULT_BANDS: dict[str, tuple[Band, ...]] = {
    COSINE: (Band("low", 0.4, 0.5), Band("mid", 0.5, 0.6), Band("high", 0.6, 1.0)),
    "carlini": (Band("high", 0.0, 1.0 / 3.0), Band("mid", 1.0 / 3.0, 0.5), Band("low", 0.5, 2.0 / 3.0)),
    "l2": (Band("high", 0.0, 0.02), Band("mid", 0.02, 0.04), Band("low", 0.04, 0.06)),
}

BAND_RATIONALE: dict[str, str] = {
    COSINE: (
        "Cosine of copy-detection embeddings (SIDE paper, Fig. 4): low < 0.5, mid 0.5-0.6, high > 0.6. "
        "The paper gives no lower edge for the low band; 0.4 is used because a low band without one would "
        "count every novel image, and 0.4 agrees with the paper's Table 1: on CelebA-25000 Carlini UnCond "
        "has AMS 5.00 + 0.10 + 0.00 = 5.10 % over the three bands and a 95th-percentile similarity of "
        "0.404, i.e. about 5 % of its generations lie above 0.4."
    ),
    "carlini": (
        "Normalized L2 (smaller is more similar); the paper publishes no edges. They are derived from "
        "Gu et al.'s rule (memorized when nearest < 1/3 of the second nearest). The normalizer is "
        "0.5 x the mean distance to the 50 nearest training images, and that mean is at least about the "
        "second-nearest distance d2, so normalized L2 <= 2 x d1 / d2: a generation Gu's rule flags "
        "(d1/d2 < 1/3) has normalized L2 below about 2/3. Edges 2/3, 1/2, 1/3 are Gu's ratio 1/3, 1/4, "
        "1/6 mapped the same way: low [1/2, 2/3], mid [1/3, 1/2), high [0, 1/3)."
    ),
    "l2": (
        "RMS L2 on [0, 1] pixels (smaller is more similar); the paper publishes no edges. Equal steps of "
        "0.02 (about 5 grey levels of RMS error on 8-bit images): high [0, 0.02) is within re-encoding "
        "and resampling noise, mid [0.02, 0.04), low [0.04, 0.06]. The loosest edge stays below the "
        "distance at which distinct training images start to match each other (on the embedded digits "
        "the nearest other training image is >= 0.068 for 99 % of them). Absolute pixel distances depend "
        "on the data; prefer 'carlini', which normalizes by the local density."
    ),
}


def default_bands(similarity: str) -> list[Band]:
    """The default bands of a similarity (``"l2"``, ``"carlini"`` or ``"cosine"``)."""
    return list(DEFAULT_BANDS[check_similarity(similarity)])


def parse_bands(text: str) -> list[Band]:
    """Parse ``"name:low:high,name:low:high,..."`` (``inf`` allowed as an edge) and validate the bands.

    Example:

    ```py
    >>> from diffusers_side.evaluation.metrics import parse_bands
    >>> parse_bands("low:0.4:0.5,mid:0.5:0.6,high:0.6:1")[0]
    Band(name='low', low=0.4, high=0.5)
    ```
    """
    bands = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3:
            raise ValueError(f"Band {item.strip()!r} is not of the form name:low:high (e.g. --bands low:0.4:0.5,mid:0.5:0.6).")
        name, low, high = parts
        try:
            bands.append(Band(name.strip(), float(low), float(high)))
        except ValueError:
            raise ValueError(f"Band {item.strip()!r} has an edge that is not a number; use e.g. mid:0.5:0.6.") from None
    return validate_bands(bands)


def validate_bands(bands: Sequence[Band | Sequence]) -> list[Band]:
    """Check that bands are well formed, sorted by their edges and non-overlapping.

    Args:
        bands: `Band`s or ``(name, low, high)`` triples, sorted by their edges (touching edges allowed).

    Returns:
        `list[Band]`: the bands.

    Raises:
        `ValueError`: on an empty list, a duplicate or empty name, a band with ``low >= high`` or a
        non-finite lower edge, or bands that are unsorted or overlap (the message names them).
    """
    bands = [band if isinstance(band, Band) else Band(str(band[0]), float(band[1]), float(band[2])) for band in bands]
    if not bands:
        raise ValueError("No bands given; pass at least one band, e.g. --bands low:0.4:0.5.")
    names = [band.name for band in bands]
    if any(not name for name in names) or len(set(names)) != len(names):
        raise ValueError(f"Band names must be non-empty and distinct; got {names}.")
    for band in bands:
        if not (np.isfinite(band.low) and band.low < band.high) or np.isnan(band.high):
            raise ValueError(f"Band {_describe(band)} is empty or malformed: it needs a finite low edge below its high edge.")
    for previous, band in zip(bands, bands[1:]):
        if band.low < previous.low:
            raise ValueError(
                f"Bands are unsorted: {_describe(band)} comes after {_describe(previous)}; list bands by increasing edges."
            )
        if band.low < previous.high:
            raise ValueError(
                f"Bands overlap: {_describe(previous)} and {_describe(band)}; make each band start where the previous one ends."
            )
    return bands


def _describe(band: Band) -> str:
    return f"{band.name!r} [{band.low:g}, {band.high:g})"


def assign_bands(scores: np.ndarray, bands: Sequence[Band]) -> np.ndarray:
    """Index into `bands` of the band each score falls in, or -1 when it is in none.

    Bands are ``[low, high)``; the last band (largest edges) is ``[low, high]``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    assigned = np.full(scores.shape, -1, dtype=np.int64)
    for position, band in enumerate(bands):
        upper = scores <= band.high if position == len(bands) - 1 else scores < band.high
        assigned[(scores >= band.low) & upper] = position
    return assigned


def band_interval(band: Band, bands: Sequence[Band]) -> str:
    """The band as an interval string, ``[low, high)``, or ``[low, high]`` for the last band of ``bands``."""
    closing = "]" if band == bands[-1] else ")"
    return f"[{band.low:.4g}, {band.high:.4g}{closing}"


def display_order(bands: Sequence[Band], similarity: str) -> list[Band]:
    """The bands from least to most similar (the order of the paper's tables)."""
    return list(reversed(bands)) if smaller_is_more_similar(similarity) else list(bands)
