"""Write the blind candidate list of a set of generations (format: `diffusers_side.storage.candidate_files`).

``side extract`` writes it beside the generations when it finishes; ``side candidates`` for any folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from diffusers.utils import logging

from ..evaluation.report import save_match_figure
from ..similarity.nearest_match import DEFAULT_CHUNK_SIZE
from ..storage.candidate_files import CANDIDATES_FIGURE, CANDIDATES_JSON, CANDIDATES_PARQUET, candidates_dir
from ..storage.data import find_image_column, images_to_tensor, load_image_dataset
from ..storage.generation_folder import read_settings
from ..utils.atomic_io import atomic_path, write_json_atomic
from .ranking import DUPLICATE_THRESHOLD, MAX_NEIGHBORS, CandidateList, rank_candidates

logger = logging.get_logger(__name__)

FIGURE_CANDIDATES = 16
PREVIEW = 10
BATCH_SIZE = 512


def pixel_rows(dataset: Dataset, column: str, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Every image of ``dataset`` as a flattened uint8 row (exact for 8-bit images)."""
    rows = []
    for start in range(0, len(dataset), batch_size):
        batch = images_to_tensor(dataset[start : start + batch_size][column])
        rows.append((batch * 255).round_().to(torch.uint8).flatten(1))
    return torch.cat(rows)


def _table(ranked: CandidateList, dataset: Dataset) -> dict:
    def column(name: str, default: int) -> list[int]:
        values = dataset[name] if name in dataset.column_names else [default] * len(dataset)
        return [int(values[i]) for i in ranked.row]

    return {
        "rank": list(range(1, len(ranked) + 1)),
        "row": ranked.row.tolist(),
        "index": column("index", -1),
        "seed": column("seed", -1),
        "target": column("target", -1),
        "group_size": ranked.group_size.tolist(),
        "tightness": ranked.tightness.astype(np.float64).tolist(),
        "num_members": [len(m) for m in ranked.members],
        "members": ranked.members,
        "nearest_row": ranked.nearest_row.tolist(),
        "nearest_distance": ranked.nearest_distance.astype(np.float64).tolist(),
    }


def write_candidates(
    source: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    threshold: float = DUPLICATE_THRESHOLD,
    max_neighbors: int = MAX_NEIGHBORS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str | None = None,
) -> dict:
    """
    Rank the generations of ``source`` (`rank_candidates`) and write the list, its summary and figure.

    Args:
        source: a generation folder, or any image data set `load_image_dataset` reads (then ``output_dir`` is needed).
        output_dir: where the files go (default: ``source``, when it is a generation folder).
        threshold (`float`), max_neighbors (`int`), chunk_size (`int`), device: as in `rank_candidates`.

    Returns:
        `dict`: the content of ``candidates.json``.

    Example:

    ```py
    >>> from diffusers_side.candidates.files import write_candidates
    >>> summary = write_candidates("runs/uncond")  # runs/uncond/candidates.parquet, .json, .png
    >>> summary["top"][0]["group_size"]
    ```
    """
    directory = candidates_dir(source, output_dir)
    dataset = load_image_dataset(source)
    column = find_image_column(dataset)
    ranked = rank_candidates(pixel_rows(dataset, column), threshold, max_neighbors=max_neighbors, chunk_size=chunk_size, device=device)
    table = _table(ranked, dataset)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / CANDIDATES_PARQUET) as tmp:
        Dataset.from_dict(table).to_parquet(str(tmp))
    summary = {
        "source": str(source),
        "num_generations": len(dataset),
        "num_candidates": len(ranked),
        "num_groups": int((ranked.group_size > 1).sum()),
        "settings": ranked.settings,
        "generation_settings": read_settings(source),
        "ranking": "group_size descending, then tightness ascending, then row; near-duplicates of a listed candidate merged into it",
        "files": {"table": CANDIDATES_PARQUET, "figure": CANDIDATES_FIGURE},
        "top": [{key: table[key][i] for key in ("rank", "row", "index", "seed", "group_size", "tightness", "num_members")}
                for i in range(min(PREVIEW, len(ranked)))],
    }
    save_candidate_figure(dataset, column, table, directory / CANDIDATES_FIGURE, f"top candidates of {Path(str(source)).name}")
    write_json_atomic(directory / CANDIDATES_JSON, summary)
    logger.info(f"{len(ranked)} candidates ({summary['num_groups']} near-duplicate groups) written to {directory}.")
    return summary


def save_candidate_figure(dataset: Dataset, column: str, table: dict, path: Path, title: str, count: int = FIGURE_CANDIDATES) -> Path:
    """The top ``count`` candidates, each beside its nearest other generation (the evidence an attacker sees)."""
    pairs = []
    for i in range(min(count, len(table["row"]))):
        caption = f"#{table['rank'][i]} x{table['group_size'][i]} {table['tightness'][i]:.2f}"
        pairs.append((dataset[table["row"][i]][column], dataset[table["nearest_row"][i]][column], caption))
    header = "candidate | nearest other generation; caption: rank, group size, tightness"
    return save_match_figure([(header, len(table["row"]), pairs)], path, title)
