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

from ..similarity.measures import get_similarity, smaller_is_more_similar


@dataclass(frozen=True)
class Band:
    """One similarity band: the scores in ``[low, high)`` (``[low, high]`` for the last band)."""

    name: str
    low: float
    high: float

    def to_dict(self) -> dict:
        """The band as ``{"name", "low", "high"}`` (as stored in reports)."""
        return asdict(self)



def default_bands(similarity: str) -> list[Band]:
    """The default bands of a registered similarity, sorted by their edges (each similarity states its own:
    `diffusers_side.similarity.base.Similarity.default_bands`)."""
    return [Band(*triple) for triple in get_similarity(similarity).default_bands]


def band_rationale(similarity: str) -> str:
    """Where a similarity's default bands come from."""
    return get_similarity(similarity).band_rationale


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
