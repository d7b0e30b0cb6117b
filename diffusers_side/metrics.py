"""Similarities, nearest-match search and the extraction metrics of SIDE (AMS, UMS, Gu et al.'s ratio).

Three similarities score a generated image against the training (reference) set:

- ``"l2"``: the RMS L2 distance on ``[0, 1]`` pixels, ``l2(a, b) = sqrt(mean((a - b) ** 2))``.
  *Smaller is more similar.*
- ``"carlini"``: Carlini et al.'s normalized L2 (USENIX Security 2023),
  ``l2(x_hat, x) / (alpha * mean(l2(x_hat, y) for the n training y nearest to x_hat))`` with
  ``alpha = 0.5`` and ``n = 50``; ``n`` is capped at the reference size. *Smaller is more similar.*
- ``"cosine"``: the cosine similarity of L2-normalised feature embeddings (SSCD, DINOv2, CLIP, the
  UNet's own features; see `diffusers_side.features`). *Larger is more similar.*

The nearest-match search ([`nearest_neighbors`]) never holds the full ``N_G x N_train`` matrix: the
generations are processed in chunks of ``chunk_size`` rows and, for each chunk, the training images
in chunks of ``chunk_size`` columns, keeping a running top-k. Candidates are selected in float32 with
the matmul expansion ``||b||^2 - 2 a.b`` (the squared distance minus ``||a||^2``, which is constant per
row and added back, then clamped at 0, only for the kept candidates). The best and second-best scores, the ones reported, used for the
bands and for Gu et al.'s ratio, are then recomputed directly in float64 (an exact copy scores exactly
0, or cosine 1) and ordered with ties broken by the lower training index, so they do not depend on the
chunking. Further neighbours (only averaged by Carlini's normalizer) keep their float32 values, whose
relative error is about 1e-6. Memory: about ``chunk_size * (chunk_size + k)`` floats for the search,
one chunk of generations, and the reference held once as float32 (``N_train * D * 4`` bytes); the
generations may stay uint8.

Bands are intervals of the similarity score, ``[low, high)``; the band with the largest edges also
includes its upper edge (so an exact copy with cosine 1.0 is counted in ``[0.6, 1.0]``). The names
(low / mid / high) are similarity levels, not numeric positions: for distances the *high* band has
the *smallest* edges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from diffusers.utils import logging
from tqdm.auto import tqdm

logger = logging.get_logger(__name__)

PIXEL_SIMILARITIES = ("l2", "carlini")
COSINE = "cosine"
SIMILARITIES = PIXEL_SIMILARITIES + (COSINE,)

CARLINI_ALPHA = 0.5
CARLINI_NUM_NEIGHBORS = 50
MEMORIZATION_RATIO = 1.0 / 3.0
DEFAULT_CHUNK_SIZE = 1024
# How many nearest neighbours get their score recomputed exactly in float64 (best and second best).
EXACT_NEIGHBORS = 2
MAX_INT32_SQUARED_SUM_DIM = (2**31 - 1) // 255**2


@dataclass(frozen=True)
class Band:
    """One similarity band: the scores in ``[low, high)`` (``[low, high]`` for the last band)."""

    name: str
    low: float
    high: float

    def to_dict(self) -> dict:
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


def similarity_kind(similarity: str) -> str:
    """Map a similarity name to ``"l2"``, ``"carlini"`` or ``"cosine"`` (any other name is a feature extractor)."""
    return similarity if similarity in SIMILARITIES else COSINE


def smaller_is_more_similar(similarity: str) -> bool:
    """True for the distances (``"l2"``, ``"carlini"``), False for cosine similarities."""
    return similarity_kind(similarity) in PIXEL_SIMILARITIES


def direction_text(similarity: str) -> str:
    """A short sentence saying which way the similarity points, for reports."""
    return "smaller is more similar" if smaller_is_more_similar(similarity) else "larger is more similar"


def default_bands(similarity: str) -> list[Band]:
    """The default bands of a similarity (any feature extractor gets the cosine bands)."""
    return list(DEFAULT_BANDS[similarity_kind(similarity)])


def parse_bands(text: str) -> list[Band]:
    """Parse ``"name:low:high,name:low:high,..."`` (``inf`` allowed as an edge) and validate the bands.

    Example:

    ```py
    >>> from diffusers_side.metrics import parse_bands
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


def _to_float(block: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A block of rows as floats; uint8 rows are pixels and are read as ``value / 255``."""
    block = block.to(device)
    if block.dtype == torch.uint8:
        return block.to(dtype) / 255.0
    return block.to(dtype)


def _check_search_inputs(queries: torch.Tensor, keys: torch.Tensor, k: int, metric: str, chunk_size: int) -> None:
    if metric not in ("l2", COSINE):
        raise ValueError(f"Unknown metric {metric!r}; use 'l2' or 'cosine'.")
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(
            f"Queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must be 2-D with the same number of columns."
        )
    if len(queries) == 0 or len(keys) == 0:
        raise ValueError(f"Nothing to search: {len(queries)} queries against {len(keys)} keys.")
    if not 1 <= k <= len(keys):
        raise ValueError(f"k={k} must be between 1 and the number of keys ({len(keys)}).")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}.")


def _prepare_key_chunks(keys: torch.Tensor, chunk_size: int, metric: str, device: torch.device) -> list[tuple]:
    """Float32 key chunks, pre-scaled so that one matmul plus one addition gives a block of selection costs.

    For l2 the chunk holds ``-2 k`` and its squared norms ``||k||^2``; for cosine it holds ``-k`` (no norms).
    """
    chunks = []
    for start in range(0, len(keys), chunk_size):
        raw = keys[start : start + chunk_size]
        key = _to_float(raw, device, torch.float32)
        owned = key.data_ptr() != raw.data_ptr()  # else `key` is the caller's own rows: never scale in place
        norms = None if metric == COSINE else key.pow(2).sum(dim=1)
        factor = -1.0 if metric == COSINE else -2.0
        chunks.append((start, key.mul_(factor) if owned else key * factor, norms))
    return chunks


def _block_costs(query: torch.Tensor, scaled_key: torch.Tensor, key_norms: torch.Tensor | None) -> torch.Tensor:
    """Selection costs of a query chunk against a key chunk (smaller = nearer).

    l2: ``||k||^2 - 2 q.k``, the squared distance minus ``||q||^2`` (constant per row, so the order of a row
    is that of the distances; it is added back to the kept candidates only). Cosine: ``-q.k``.
    """
    costs = query @ scaled_key.T
    return costs if key_norms is None else costs.add_(key_norms)


def _merge_top_k(
    best_costs: torch.Tensor, best_indices: torch.Tensor, costs: torch.Tensor, key_start: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold one block of costs into the running top-k of every row (ascending).

    Until a row holds k candidates, the block's own top-k is merged in. After that only the entries
    below the row's k-th best can enter, and few do: they are gathered (one comparison pass over the
    block) into a narrow block padded with ``inf``, and only the rows that have any are merged. This
    keeps the selection cheap next to the matmul even for Carlini's 50 neighbours.
    """
    if best_costs.shape[1] < k:
        block_costs, block_positions = costs.topk(min(k, costs.shape[1]), dim=1, largest=False)
        return _merge_rows(best_costs, best_indices, block_costs, block_positions + key_start, k)
    thresholds = best_costs[:, -1]
    rows = (costs.amin(dim=1) < thresholds).nonzero().squeeze(1)  # a cheap reduction skips most rows
    if len(rows) == 0:
        return best_costs, best_indices
    block = costs.index_select(0, rows)
    row_of, column_of = (block < thresholds.index_select(0, rows)[:, None]).nonzero(as_tuple=True)  # row-major
    counts = torch.bincount(row_of, minlength=len(rows))
    slot = torch.arange(len(row_of), device=costs.device) - (counts.cumsum(0) - counts).index_select(0, row_of)
    new_costs = costs.new_full((len(rows), int(counts.max())), float("inf"))
    new_indices = torch.zeros_like(new_costs, dtype=best_indices.dtype)
    new_costs[row_of, slot] = block[row_of, column_of]
    new_indices[row_of, slot] = column_of + key_start
    merged_costs, merged_indices = _merge_rows(
        best_costs.index_select(0, rows), best_indices.index_select(0, rows), new_costs, new_indices, k
    )
    best_costs[rows], best_indices[rows] = merged_costs, merged_indices
    return best_costs, best_indices


def _merge_rows(costs_a, indices_a, costs_b, indices_b, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest costs of each row of two candidate lists, with their indices."""
    costs = torch.cat([costs_a, costs_b], dim=1)
    indices = torch.cat([indices_a, indices_b], dim=1)
    kept_costs, positions = costs.topk(min(k, costs.shape[1]), dim=1, largest=False)
    return kept_costs, indices.gather(1, positions)


def _exact_scores(query: torch.Tensor, keys: torch.Tensor, candidates: torch.Tensor, metric: str) -> torch.Tensor:
    """Float64 scores of each raw query row against its candidate keys: RMS L2 or cosine (clamped to [-1, 1]).

    uint8 pixels are compared in integer arithmetic (exact, and cheaper than float64 differences).
    """
    device = candidates.device
    scores = torch.empty(candidates.shape, dtype=torch.float64, device=device)
    integer = metric == "l2" and query.dtype == torch.uint8 and keys.dtype == torch.uint8
    # A sum of D squared uint8 differences fits in int32 up to D = 33,025 (255^2 * 33,025 < 2^31).
    sum_dtype = torch.int32 if query.shape[1] <= MAX_INT32_SQUARED_SUM_DIM else torch.int64
    query = query.to(device, torch.int32) if integer else _to_float(query, device, torch.float64)
    for column in range(candidates.shape[1]):
        key = keys.index_select(0, candidates[:, column])
        if integer:
            squared = (query - key.to(torch.int32)).square_().sum(dim=1, dtype=sum_dtype)
            scores[:, column] = (squared.double() / (255.0**2 * query.shape[1])).sqrt()
        elif metric == COSINE:
            scores[:, column] = (query * _to_float(key, device, torch.float64)).sum(dim=1).clamp(-1.0, 1.0)
        else:
            scores[:, column] = (query - _to_float(key, device, torch.float64)).pow(2).mean(dim=1).sqrt()
    return scores


def _sort_candidates(scores: torch.Tensor, candidates: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row nearest first, ties by the lower key index."""
    candidates, order = candidates.sort(dim=1)
    scores = scores.gather(1, order)
    scores, order = scores.sort(dim=1, descending=metric == COSINE, stable=True)
    return scores, candidates.gather(1, order)


def nearest_neighbors(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    metric: str = "l2",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str | torch.device | None = None,
    show_progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest keys of every query, found chunk by chunk with a running top-k.

    Args:
        queries (`torch.Tensor`): ``(N_q, D)`` rows, float or uint8 (uint8 is read as pixels ``/ 255``,
            so large image sets can stay four times smaller in memory).
        keys (`torch.Tensor`): ``(N_k, D)`` rows, same conventions.
        k (`int`): how many neighbours to keep, ``1 <= k <= N_k``.
        metric (`str`, defaults to `"l2"`): ``"l2"`` (RMS L2 distance, ascending) or ``"cosine"``
            (dot product of L2-normalised rows, descending).
        chunk_size (`int`): rows of queries and of keys handled at once; memory is bounded by about
            ``chunk_size * (chunk_size + k)`` floats, whatever ``N_q`` and ``N_k`` are.
        device: where to compute (defaults to the CPU).
        show_progress (`bool`): show a progress bar over the query chunks.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: float64 scores ``(N_q, k)``, nearest first, and the int64
        key indices ``(N_q, k)``, on the CPU. The first two columns are exact (float64); the others
        carry float32 rounding (see the module docstring).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_side.metrics import nearest_neighbors
    >>> keys = torch.rand(100, 48)
    >>> scores, indices = nearest_neighbors(keys[:5] + 0.01, keys, k=2, chunk_size=32)
    >>> indices[:, 0].tolist()
    [0, 1, 2, 3, 4]
    ```
    """
    _check_search_inputs(queries, keys, k, metric, chunk_size)
    device = torch.device(device or "cpu")
    keys = keys.to(device)
    key_chunks = _prepare_key_chunks(keys, chunk_size, metric, device)
    all_scores, all_indices = [], []
    for start in tqdm(range(0, len(queries), chunk_size), desc="nearest-match search", disable=not show_progress):
        raw_query = queries[start : start + chunk_size]
        query = _to_float(raw_query, device, torch.float32)
        best_costs = torch.empty(len(query), 0, device=device)
        best_indices = torch.empty(len(query), 0, dtype=torch.int64, device=device)
        for key_start, scaled_key, key_norms in key_chunks:
            costs = _block_costs(query, scaled_key, key_norms)
            best_costs, best_indices = _merge_top_k(best_costs, best_indices, costs, key_start, k)
        if metric == COSINE:
            scores = best_costs.double().neg()
        else:  # add back ||q||^2; rounding can make a near-copy's squared distance slightly negative
            squared = best_costs.double() + query.double().pow(2).sum(dim=1, keepdim=True)
            scores = (squared.clamp_min(0.0) / keys.shape[1]).sqrt()
        exact = min(EXACT_NEIGHBORS, k)
        exact_scores = _exact_scores(raw_query, keys, best_indices[:, :exact], metric)
        scores[:, :exact], best_indices[:, :exact] = _sort_candidates(exact_scores, best_indices[:, :exact], metric)
        all_scores.append(scores.cpu())
        all_indices.append(best_indices.cpu())
    return torch.cat(all_scores), torch.cat(all_indices)


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
    """

    best_index: np.ndarray
    score: np.ndarray
    second_score: np.ndarray
    nearest_distance: np.ndarray
    second_distance: np.ndarray
    num_neighbors: int = 0

    def subset(self, mask: np.ndarray) -> "Matches":
        """The matches of the generations selected by a boolean mask (or index array)."""
        return Matches(
            self.best_index[mask],
            self.score[mask],
            self.second_score[mask],
            self.nearest_distance[mask],
            self.second_distance[mask],
            self.num_neighbors,
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
    kind = similarity_kind(similarity)
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
        return Matches(indices[:, 0], normalized[:, 0], normalized[:, 1], distances[:, 0], distances[:, 1], used)
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
