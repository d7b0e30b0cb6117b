"""How good the attacker's blind candidate list is, once the training set is at hand: precision@k and distinct images.

The list itself (`diffusers_side.candidates`) is computed without the training set. When ``side evaluate`` scores a
generation folder that holds one (``candidates.parquet``), each candidate is a generation whose best training match
is already known, so:

- ``precision@k``: the fraction of the top ``k`` candidates whose best match lies in a *counted* band (the two most
  similar bands: mid + high for the default bands, the bands of the auditor-tuned lambda criterion, `workflows.demo_sweep`);
- ``distinct@k``: the number of distinct training images those hits copy;
- for context, ``base_rate`` (the precision of a generation drawn at random from the set) and ``distinct_in_set``
  (the distinct training images the whole set copies in the counted bands, the most any ``k`` can reach).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..storage.candidate_files import read_candidates
from .bands import Band, display_order
from .report import FIGURES_DIR, figure_name, save_match_figure

DEFAULT_KS = (10, 50, 100)
FIGURE_CANDIDATES = 16


def counted_bands(bands: Sequence[Band], kind: str) -> list[Band]:
    """The bands a candidate must land in to count as a hit: the two most similar (all of them if fewer)."""
    return display_order(bands, kind)[-2:]


def candidate_metrics(
    ranked_rows: np.ndarray, best_index: np.ndarray, assigned: np.ndarray, bands: Sequence[Band], kind: str,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """
    Precision@k and distinct training images among the top k candidates of one set of generations.

    Args:
        ranked_rows (`np.ndarray`): the candidates' rows in the set, best first.
        best_index (`np.ndarray`), assigned (`np.ndarray`): per generation of the set, its best training match and
            the index of its band in ``bands`` (-1: in none), as `diffusers_side.evaluation.bands.assign_bands` gives.
        bands, kind: the evaluation's bands and similarity kind.
        ks: the cut-offs (each capped at the list's length).

    Returns:
        `dict` with ``bands`` (counted band names), ``num_candidates``, ``base_rate``, ``distinct_in_set`` and
        ``at`` (per k: ``k``, ``hits``, ``precision``, ``distinct`` and ``per_band`` counts).

    Example:

    ```py
    >>> import numpy as np
    >>> from diffusers_side.evaluation.bands import default_bands
    >>> from diffusers_side.evaluation.candidates import candidate_metrics
    >>> bands = default_bands("carlini")  # high, mid, low
    >>> result = candidate_metrics(np.array([1, 0, 2]), np.array([7, 7, 9]), np.array([1, -1, 0]), bands, "carlini", ks=(2,))
    >>> result["at"]["2"]["precision"], result["at"]["2"]["distinct"]
    (0.5, 1)
    ```
    """
    ranked_rows = np.asarray(ranked_rows, dtype=np.int64)
    counted = [list(bands).index(band) for band in counted_bands(bands, kind)]
    in_counted = np.isin(assigned, counted)
    hit = in_counted[ranked_rows]
    result = {
        "bands": [bands[i].name for i in counted],
        "num_candidates": len(ranked_rows),
        "num_generations": len(assigned),
        "base_rate": float(in_counted.mean()),
        "distinct_in_set": int(np.unique(best_index[in_counted]).size),
        "at": {},
    }
    for k in ks:
        top = ranked_rows[:k]
        top_hit = hit[:k]
        result["at"][str(k)] = {
            "k": len(top),
            "hits": int(top_hit.sum()),
            "precision": float(top_hit.mean()) if len(top) else float("nan"),
            "distinct": int(np.unique(best_index[top][top_hit]).size),
            "per_band": {band.name: int((assigned[top] == position).sum()) for position, band in enumerate(bands)},
        }
    return result


def load_candidate_tables(generated: Sequence) -> dict[int, dict]:
    """The candidate list of every generated set that has one, keyed by the set's position (checked, cheap)."""
    tables = {}
    for position, image_set in enumerate(generated):
        table = read_candidates(image_set.source, len(image_set.dataset))
        if table is not None:
            tables[position] = table
    return tables


def evaluate_candidates(matched, bands: Sequence[Band], kind: str, output_dir: str | os.PathLike, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Metrics and a figure (top candidates beside their best training match) for every set with a candidate list.

    Args:
        matched (`diffusers_side.evaluation.evaluate.MatchedSets`): the matched sets, with ``candidate_tables``.
        bands, kind: the evaluation's bands and similarity kind.
        output_dir: the evaluation folder (figures go to ``figures/``).

    Returns:
        `dict`: source -> the `candidate_metrics` of its list, its ``method`` and ``figure`` (relative path).
    """
    results = {}
    source_ids = matched.columns["source_id"]
    for position, table in (matched.candidate_tables or {}).items():
        image_set = matched.generated[position]
        rows = np.flatnonzero(source_ids == position)  # the set's generations, in row order
        local = np.asarray(table["row"], dtype=np.int64)  # rows within the set
        ranked = rows[local]  # rows among all matched generations
        metrics = candidate_metrics(local, matched.matches.best_index[rows], matched.assigned[rows], bands, kind, ks)
        method = str(matched.columns["method"][rows[0]])
        figure = (Path(FIGURES_DIR) / figure_name(f"candidates-{Path(image_set.source).name}")).as_posix()
        pairs = []
        for rank in range(min(FIGURE_CANDIDATES, len(ranked))):
            generation, training, caption = matched.fetch_pair(int(ranked[rank]))
            band = bands[matched.assigned[ranked[rank]]].name if matched.assigned[ranked[rank]] >= 0 else "none"
            pairs.append((generation, training, f"#{rank + 1} x{table['group_size'][rank]} {band} {caption.split()[0]}"))
        header = f"ranked without the training set | best training match ({', '.join(metrics['bands'])} count as hits)"
        save_match_figure([(header, len(ranked), pairs)], Path(output_dir) / figure, f"{method}: top blind candidates")
        results[image_set.source] = {"method": method, "figure": figure, **metrics}
    return results
