"""The folders `side divergence` and `side query-only` write: a JSON record, a short markdown report, and (query-only)
the queried images as an image data set `side evaluate --generated` reads.

Each folder is one kind of artefact (`diffusers_side.storage.outputs.KINDS`: ``divergence.json`` /
``query_only.json`` mark it), so a re-run may refresh it and no other command overwrites it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from datasets import Dataset, Features, Image, Value
from diffusers.utils import logging

from ..storage.outputs import DIVERGENCE, QUERY_ONLY, write_manifest, written_files
from ..utils.atomic_io import atomic_directory, write_json_atomic, write_text_atomic
from .divergence import MemorizationDivergence
from .query_only import QueryOnlyResult

logger = logging.get_logger(__name__)

DIVERGENCE_JSON = "divergence.json"
QUERY_ONLY_JSON = "query_only.json"
REPORT_MD = "report.md"
QUERY_IMAGES = "images"
QUERY_FEATURES = Features({
    "image": Image(), "query": Value("int64"), "target": Value("int64"), "fitness": Value("float32"),
    "generation": Value("int64"), "best": Value("bool"), "method": Value("string"),
})


def write_divergence(result: MemorizationDivergence, output_dir: str | os.PathLike, settings: dict) -> Path:
    """Write ``divergence.json`` (the estimate and ``settings``) and ``report.md``; return the folder.

    Example:

    ```py
    >>> from diffusers_side.audits.reports import write_divergence
    >>> write_divergence(result, "runs/divergence", {"pipeline": "digits-rare", "reference": "digits-rare"})
    ```
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / DIVERGENCE_JSON, {"settings": settings, "result": result.to_dict()})
    lines = [
        "# Memorization divergence", "",
        f"M(D; p_theta, eps) = KL(q_eps || p_theta) (SIDE, Def. 1) of `{settings.get('pipeline')}` on "
        f"`{settings.get('reference')}`" + (f", beside `{settings['holdout']}`" if settings.get("holdout") else "") + ".",
        "log p_theta: probability-flow ODE with a Hutchinson trace estimator (docs/divergence.md).", "",
        "```", result.describe(), "```", "",
        "A larger gap (holdout - train) means the model puts more density on its training images than on unseen ones.",
    ]
    write_text_atomic(folder / REPORT_MD, "\n".join(lines) + "\n")
    write_manifest(folder, DIVERGENCE, [DIVERGENCE_JSON, REPORT_MD])
    logger.info(f"Memorization divergence written to {folder}.")
    return folder


def write_query_only(result: QueryOnlyResult, output_dir: str | os.PathLike, settings: dict) -> Path:
    """Write every queried image with its target and fitness (``images/``, a data set; ``best`` marks the returned
    ones), ``query_only.json`` and ``report.md``; return the folder.

    Example:

    ```py
    >>> from diffusers_side.audits.reports import write_query_only
    >>> write_query_only(result, "runs/query-only", {"pipeline": "digits-rare", "num_queries": 200})
    ```
    """
    if result.images is None:
        raise ValueError("the query-only result holds no images; run query_only_search(..., keep_images=True).")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    best = torch.zeros(result.num_queries, dtype=torch.bool)
    best[result.best_indices] = True
    pixels = (result.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = [p[..., 0] if p.shape[-1] == 1 else p for p in pixels]
    dataset = Dataset.from_dict({
        "image": images, "query": list(range(result.num_queries)), "target": result.targets.tolist(),
        "fitness": result.fitness.tolist(), "generation": result.generation.tolist(), "best": best.tolist(),
        "method": ["query-only"] * result.num_queries,
    }, features=QUERY_FEATURES)
    with atomic_directory(folder / QUERY_IMAGES) as staging:
        dataset.save_to_disk(str(staging))
    summary = {
        "settings": settings, "num_queries": result.num_queries, "num_targets": int(result.targets.unique().numel()),
        "best_indices": result.best_indices.tolist(), "mean_fitness": float(result.fitness.mean()),
        "mean_best_fitness": float(result.fitness[result.best_indices].mean()),
        "mean_fitness_first_generation": float(result.fitness[result.generation == 0].mean()),
    }
    write_json_atomic(folder / QUERY_ONLY_JSON, summary)
    lines = [
        "# Query-only SIDE", "",
        f"{result.num_queries} queries to `{settings.get('pipeline')}` (initial noises in, images out; no gradient of the "
        f"model read), {summary['num_targets']} surrogate conditions searched with CMA-ES, fitness log p(c | x) of "
        f"`{settings.get('classifier')}`.", "",
        f"- mean fitness: first generation (plain sampling) {summary['mean_fitness_first_generation']:.3f}, all queries "
        f"{summary['mean_fitness']:.3f}, returned (best per target) {summary['mean_best_fitness']:.3f}",
        f"- images: `{QUERY_IMAGES}/` (columns query, target, fitness, generation, best); score them with "
        f"`side evaluate --generated {folder / QUERY_IMAGES} --reference TRAINING_SET --output EVAL`",
    ]
    write_text_atomic(folder / REPORT_MD, "\n".join(lines) + "\n")
    write_manifest(folder, QUERY_ONLY, written_files(folder))
    logger.info(f"{result.num_queries} queries written to {folder}.")
    return folder
