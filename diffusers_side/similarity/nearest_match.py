"""The chunked nearest-match search: the top-k training rows of every generation, in bounded memory.

The nearest-match search ([`nearest_neighbors`]) never holds the full ``N_G x N_train`` matrix: it
works on blocks of costs of ``chunk_size / 2`` generations by ``8 * chunk_size`` training images (the
counts evened out over the chunks, the width a multiple of 64), keeping a running top-k per generation. Wide blocks keep the
selection cheap next to the matmul (see `_merge_block`): at 16x16 pixels a matmul entry costs about as
much as a ``topk`` entry, so selecting from every column would halve the throughput. Candidates are
selected in float32 with the matmul expansion ``||b||^2 - 2 a.b`` (the squared distance minus
``||a||^2``, which is constant per row and added back, then clamped at 0, only for the kept
candidates). The best and second-best scores, the ones reported, used for the bands and for Gu et al.'s
ratio, are then recomputed directly in float64 (an exact copy scores exactly 0, or cosine 1) and ordered
with ties broken by the lower training index, so they do not depend on the chunking. Further neighbours
(only averaged by Carlini's normalizer) keep their float32 values, whose relative error is about 1e-6.
Memory: one block of ``4 * chunk_size ** 2`` float32 costs (16 MiB at the default 1024), one chunk of
generations, and the reference held once as float32 (``N_train * D * 4`` bytes); the generations may
stay uint8.

Self-contained (no package imports), so benchmarks/compare_search.py can load another checkout's copy.
"""

from __future__ import annotations

import math

import torch
from diffusers.utils import logging
from tqdm.auto import tqdm

logger = logging.get_logger(__name__)

L2 = "l2"
COSINE = "cosine"
DEFAULT_CHUNK_SIZE = 1024
# A block of costs is (chunk_size // QUERY_DIVISOR) queries by (KEY_MULTIPLIER * chunk_size) keys.
QUERY_DIVISOR = 2
KEY_MULTIPLIER = 8
KEY_ALIGNMENT = 64
# How many nearest neighbours get their score recomputed exactly in float64 (best and second best).
EXACT_NEIGHBORS = 2
MAX_INT32_SQUARED_SUM_DIM = (2**31 - 1) // 255**2



def _to_float(block: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A block of rows as floats; uint8 rows are pixels and are read as ``value / 255``."""
    block = block.to(device)
    if block.dtype == torch.uint8:
        return block.to(dtype) / 255.0
    return block.to(dtype)


def _check_search_inputs(queries: torch.Tensor, keys: torch.Tensor, k: int, metric: str, chunk_size: int) -> None:
    if metric not in (L2, COSINE):
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


def _even_chunk(total: int, largest: int, multiple: int = 1) -> int:
    """The chunk length that splits ``total`` rows into as few chunks of at most ``largest`` as possible, evenly,
    rounded up to a ``multiple`` (matrix products are markedly slower on some odd widths)."""
    length = math.ceil(total / math.ceil(total / max(1, largest)))
    return min(total, math.ceil(length / multiple) * multiple)


def _block_shape(num_queries: int, num_keys: int, chunk_size: int) -> tuple[int, int]:
    """Queries and keys per block of costs: ``chunk_size / 2`` by ``8 * chunk_size`` at most, evened out."""
    return (
        _even_chunk(num_queries, chunk_size // QUERY_DIVISOR),
        _even_chunk(num_keys, KEY_MULTIPLIER * chunk_size, KEY_ALIGNMENT),
    )


def _prepare_key_chunks(keys: torch.Tensor, chunk_size: int, metric: str, device: torch.device) -> list[tuple]:
    """Float32 key chunks of ``chunk_size`` rows, pre-scaled so that one matmul plus one addition gives a block of
    selection costs.

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


def _keep_smallest(best_costs, best_indices, costs, indices, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest costs of each row among the running list and new candidates, with their indices (unordered)."""
    all_costs = torch.cat([best_costs, costs], dim=1)
    all_indices = torch.cat([best_indices, indices], dim=1)
    kept, chosen = all_costs.topk(min(k, all_costs.shape[1]), dim=1, largest=False, sorted=False)
    return kept, all_indices.gather(1, chosen)


def _merge_block(
    best_costs: torch.Tensor, best_indices: torch.Tensor, costs: torch.Tensor, key_start: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold one block of costs into the running k smallest of every row (kept in no particular order).

    Rather than a ``topk`` over every column, the columns are dealt into ``g ~ sqrt(width / k)`` strided
    groups and only the k groups with the smallest minima (plus the columns after the last whole group) are
    searched: the k smallest group minima are k distinct entries, so the k-th of them bounds the row's k-th
    smallest cost from above, and each of the k smallest costs lies in one of those groups. When fewer than
    half the rows have a block minimum below their running k-th best, only those rows are searched. What
    remains next to the matmul is one ``amin`` pass over the block and two ``topk`` calls over about
    ``2 sqrt(width k)`` entries per searched row.
    """
    rows, width = costs.shape
    group = int(math.sqrt(width / k)) if k < width else 1
    num_groups = width // group
    if group < 2 or num_groups <= k:  # a narrow block: every column is a candidate
        columns = torch.arange(key_start, key_start + width, device=costs.device).expand(rows, -1)
        return _keep_smallest(best_costs, best_indices, costs, columns, k)
    grouped = num_groups * group
    group_minima = costs[:, :grouped].view(rows, group, num_groups).amin(dim=1)
    if best_costs.shape[1] == k:
        block_minima = group_minima.amin(dim=1)
        if grouped < width:
            block_minima = torch.minimum(block_minima, costs[:, grouped:].amin(dim=1))
        active = (block_minima < best_costs.amax(dim=1)).nonzero().squeeze(1)
        if len(active) == 0:
            return best_costs, best_indices
        if 2 * len(active) < rows:
            kept_costs, kept_indices = _merge_block(
                best_costs.index_select(0, active), best_indices.index_select(0, active), costs.index_select(0, active),
                key_start, k,
            )
            best_costs, best_indices = best_costs.clone(), best_indices.clone()
            best_costs[active], best_indices[active] = kept_costs, kept_indices
            return best_costs, best_indices
    chosen = group_minima.topk(k, dim=1, largest=False, sorted=False).indices
    columns = (chosen[:, :, None] + torch.arange(0, grouped, num_groups, device=costs.device)).flatten(1)
    if grouped < width:
        columns = torch.cat([columns, torch.arange(grouped, width, device=costs.device).expand(rows, -1)], dim=1)
    return _keep_smallest(best_costs, best_indices, costs.gather(1, columns), columns + key_start, k)


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
        chunk_size (`int`): sets the block of costs computed at once, ``chunk_size / 2`` queries by
            ``8 * chunk_size`` keys: memory is bounded by about ``4 * chunk_size ** 2`` floats, whatever ``N_q``
            and ``N_k`` are.
        device: where to compute (defaults to the CPU).
        show_progress (`bool`): show a progress bar over the query chunks.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: float64 scores ``(N_q, k)``, nearest first, and the int64
        key indices ``(N_q, k)``, on the CPU. The first two columns are exact (float64); the others
        carry float32 rounding (see the module docstring).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_side.evaluation.metrics import nearest_neighbors
    >>> keys = torch.rand(100, 48)
    >>> scores, indices = nearest_neighbors(keys[:5] + 0.01, keys, k=2, chunk_size=32)
    >>> indices[:, 0].tolist()
    [0, 1, 2, 3, 4]
    ```
    """
    _check_search_inputs(queries, keys, k, metric, chunk_size)
    device = torch.device(device or "cpu")
    keys = keys.to(device)
    query_rows, key_rows = _block_shape(len(queries), len(keys), chunk_size)
    key_chunks = _prepare_key_chunks(keys, key_rows, metric, device)
    all_scores, all_indices = [], []
    for start in tqdm(range(0, len(queries), query_rows), desc="nearest-match search", disable=not show_progress):
        raw_query = queries[start : start + query_rows]
        query = _to_float(raw_query, device, torch.float32)
        best_costs = torch.empty(len(query), 0, device=device)
        best_indices = torch.empty(len(query), 0, dtype=torch.int64, device=device)
        for key_start, scaled_key, key_norms in key_chunks:
            costs = _block_costs(query, scaled_key, key_norms)
            best_costs, best_indices = _merge_block(best_costs, best_indices, costs, key_start, k)
        best_costs, order = best_costs.sort(dim=1)
        best_indices = best_indices.gather(1, order)
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


def keys_in_bands(
    queries: torch.Tensor,
    keys: torch.Tensor,
    bands: list[tuple[float, float, bool]],
    metric: str = "l2",
    row_scale: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str | torch.device | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Which keys score inside each band against at least one query (every pair counts, not only the nearest).

    Args:
        queries (`torch.Tensor`), keys (`torch.Tensor`), metric (`str`), chunk_size (`int`), device: as in
            [`nearest_neighbors`].
        bands (`list[tuple[float, float, bool]]`): ``(low, high, includes_high)`` per band, in score units:
            a pair is in the band when ``low <= score < high`` (``<= high`` when ``includes_high``).
        row_scale (`torch.Tensor`, *optional*): ``(N_q,)`` divisor of each query's RMS L2 distances (Carlini's
            normalizer); a query whose divisor is 0 scores 0 against every key.
        show_progress (`bool`): show a progress bar over the query chunks.

    Returns:
        `torch.Tensor`: ``(len(bands), N_k)`` booleans on the CPU. Scores are the float32 matmul expansion
        (relative error about 1e-6), so a pair that close to a band edge may be counted on either side.
    """
    _check_search_inputs(queries, keys, 1, metric, chunk_size)
    device = torch.device(device or "cpu")
    keys = keys.to(device)
    hits = torch.zeros(len(bands), len(keys), dtype=torch.bool, device=device)
    query_rows, key_rows = _block_shape(len(queries), len(keys), chunk_size)
    key_chunks = _prepare_key_chunks(keys, key_rows, metric, device)
    for start in tqdm(range(0, len(queries), query_rows), desc="in-band pairs", disable=not show_progress):
        query = _to_float(queries[start : start + query_rows], device, torch.float32)
        query_norms = query.pow(2).sum(dim=1, keepdim=True)
        scale = None if row_scale is None else row_scale[start : start + query_rows].to(device, torch.float32)[:, None]
        for key_start, scaled_key, key_norms in key_chunks:
            scores = _block_costs(query, scaled_key, key_norms)
            if metric == COSINE:
                scores = scores.neg_()
            else:
                scores = scores.add_(query_norms).clamp_min_(0.0).div_(keys.shape[1]).sqrt_()
                if scale is not None:
                    scores = torch.where(scale > 0, scores / scale.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
            columns = slice(key_start, key_start + len(scaled_key))
            for position, (low, high, includes_high) in enumerate(bands):
                below_high = scores <= high if includes_high else scores < high
                hits[position, columns] |= ((scores >= low) & below_high).any(dim=0)
    return hits.cpu()
