"""Score generated images against the training set: the evaluation step of a SIDE audit (step 8).

[`evaluate`] reads one or more generation folders (written by ``side extract`` / ``side synthesize``,
or any image data set) and a reference (training) set, finds every generation's best training match
with the chunked search of `diffusers_side.evaluation.metrics`, computes AMS / UMS per band, the 95th-percentile
similarity and Gu et al.'s memorization ratio per method, and writes the per-generation matches, the
report and the figures (see `diffusers_side.evaluation.report`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from datasets import Dataset
from diffusers.utils import logging

from ..similarity.measures import (
    CARLINI_ALPHA,
    CARLINI_NUM_NEIGHBORS,
    COSINE,
    Matches,
    describe_similarity,
    direction_text,
    get_similarity,
    smaller_is_more_similar,
)
from ..similarity.nearest_match import DEFAULT_CHUNK_SIZE
from ..storage.outputs import EVALUATION
from ..utils.atomic_io import atomic_path
from .bands import Band, band_interval, band_rationale, default_bands, display_order, parse_bands, validate_bands
from .candidates import evaluate_candidates
from .inputs import MATCHES_FILE, check_inputs_and_output, write_outputs
from .matching import DEFAULT_BATCH_SIZE, ImageSet, MatchedSets, match_generations
from .metrics import DEFAULT_UMS, UMS_COUNTINGS, UMS_DEFAULT_REASON, check_ums, extraction_metrics, training_images_in_bands
from .report import FIGURES_DIR, figure_name, package_versions, save_match_figure

logger = logging.get_logger(__name__)

DEFAULT_FIGURE_IMAGES = 8


def _check_arguments(generated, chunk_size, batch_size, max_figure_images, resolution, channels, alpha, num_neighbors):
    if not generated:
        raise ValueError("No generated sets given; pass at least one --generated DIR.")
    for name, value in (("chunk_size", chunk_size), ("batch_size", batch_size), ("max_figure_images", max_figure_images)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise ValueError(f"resolution={resolution!r} must be a positive integer.")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r} must be 1 or 3.")
    if alpha <= 0 or num_neighbors < 2:
        raise ValueError(f"Carlini's normalizer needs alpha > 0 and num_neighbors >= 2; got {alpha} and {num_neighbors}.")


def _resolve_bands(bands: Sequence[Band | tuple] | str | None, kind: str) -> tuple[list[Band], str, str]:
    """The bands, where they come from, and their rationale."""
    if bands is None:
        return default_bands(kind), f"default for {kind}", band_rationale(kind)
    bands = parse_bands(bands) if isinstance(bands, str) else validate_bands(bands)
    return bands, "user", "Edges given by the user (--bands)."


def _group_summary(result: dict, columns: dict[str, np.ndarray], rows: np.ndarray, generated: list[ImageSet]) -> dict:
    seeds, scales, targets = columns["seed"][rows], columns["guidance_scale"][rows], columns["target"][rows]
    result.update(
        method=str(columns["method"][rows][0]),
        sources=sorted({generated[i].source for i in columns["source_id"][rows]}),
        guidance_scales=sorted({float(s) for s in scales[~np.isnan(scales)]}),
        seeds={"min": int(seeds.min()), "max": int(seeds.max()), "count": len(seeds), "distinct": len(np.unique(seeds))},
        num_targets=len(np.unique(targets[targets >= 0])),
    )
    return result


def _save_matches_table(path: Path, columns, generated: list[ImageSet], matches: Matches, bands, assigned, labels) -> None:
    table = {
        "source": [generated[i].source for i in columns["source_id"]],
        "row": columns["row"],
        "index": columns["index"],
        "seed": columns["seed"],
        "method": columns["method"].tolist(),
        "group": labels.astype(str).tolist(),
        "target": columns["target"],
        "guidance_scale": columns["guidance_scale"].astype(np.float32),
        "best_match": matches.best_index,
        "score": matches.score,
        "second_score": matches.second_score,
        "nearest_distance": matches.nearest_distance,
        "second_distance": matches.second_distance,
        "band": [bands[b].name if b >= 0 else "" for b in assigned],
    }
    with atomic_path(path) as tmp:
        Dataset.from_dict(table).to_parquet(str(tmp))


def _figure_sections(matches: Matches, assigned, rows, bands: list[Band], kind: str, fetch_pair, max_images: int) -> list:
    """Per band (most similar first): its generations sorted most similar first, capped at ``max_images``."""
    sections = []
    sign = 1.0 if smaller_is_more_similar(kind) else -1.0
    for band in reversed(display_order(bands, kind)):
        members = rows[assigned[rows] == bands.index(band)]
        members = members[np.argsort(sign * matches.score[members], kind="stable")]
        pairs = [fetch_pair(int(i)) for i in members[:max_images]]
        sections.append((f"{band.name} {band_interval(band, bands)}", len(members), pairs))
    return sections


def _similarity_settings(similarity: str, kind: str, alpha: float, matches: Matches) -> dict:
    smaller = smaller_is_more_similar(kind)
    return {
        "name": similarity,
        "kind": kind,
        "description": describe_similarity(kind, similarity, alpha, matches.num_neighbors),
        "direction": direction_text(kind),
        "alpha": alpha if get_similarity(kind).normalized else None,
        "num_neighbors": matches.num_neighbors if get_similarity(kind).normalized else None,
        "p95_definition": (
            "the 5th percentile of the best-match distance (the value only the 5 % most similar generations beat)."
            if smaller
            else "the 95th percentile of the best-match cosine similarity."
        ),
        "memorization_distance": "the RMS L2 pixel distance" if smaller else "the embedding L2 distance sqrt(2 - 2 cos)",
    }


def _resolve_similarity(similarity: str | None, feature_extractor: str | None) -> str:
    """The similarity kind: ``"cosine"`` with a feature extractor, else ``similarity`` (``"carlini"`` by default).

    Raises:
        `ValueError`: an unknown similarity, a feature extractor with a pixel similarity, or ``"cosine"``
            without a feature extractor.
    """
    if similarity is None:
        return COSINE if feature_extractor is not None else "carlini"
    compares = get_similarity(similarity).compares
    if feature_extractor is not None and compares != "embeddings":
        raise ValueError(
            f"feature_extractor={feature_extractor!r} embeds images for the 'cosine' similarity, but similarity="
            f"{similarity!r} compares pixels; drop one of them or pass similarity='cosine'."
        )
    if compares == "embeddings" and feature_extractor is None:
        raise ValueError(f"similarity={similarity!r} compares embeddings: pass feature_extractor= (unet, pixels, a model id or a file).")
    return similarity


def write_figures(matched: MatchedSets, bands: list[Band], kind: str, name: str, output_dir: Path, max_images: int) -> dict[str, str]:
    """One figure per group (generated | best match, per band); returns group -> path relative to ``output_dir``."""
    figures = {}
    for label in dict.fromkeys(matched.labels.tolist()):
        rows = np.flatnonzero(matched.labels == label)
        figures[label] = (Path(FIGURES_DIR) / figure_name(label)).as_posix()
        sections = _figure_sections(matched.matches, matched.assigned, rows, bands, kind, matched.fetch_pair, max_images)
        save_match_figure(sections, output_dir / figures[label], f"{label}: generated | best training match ({name})")
    return figures


def group_metrics(
    matched: MatchedSets, bands: list[Band], kind: str, ums: str = DEFAULT_UMS, chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str | None = None,
) -> dict[str, dict]:
    """AMS, UMS (counted as ``ums`` says, see `diffusers_side.evaluation.metrics.UMS_COUNTINGS`) and the summary statistics per
    group (method, or method and scale)."""
    methods = {}
    for label in dict.fromkeys(matched.labels.tolist()):
        rows = np.flatnonzero(matched.labels == label)
        group = matched.matches.subset(rows)
        pair_hits = None
        if ums == "pairs":
            pair_hits = training_images_in_bands(
                matched.generated_rows[torch.from_numpy(rows)], matched.reference_rows, bands, kind, group, chunk_size, device
            )
        summary = extraction_metrics(group, bands, kind, pair_hits)
        methods[label] = _group_summary(summary, matched.columns, rows, matched.generated)
    return methods


def evaluate(
    generated: Sequence[str | os.PathLike],
    reference: str | os.PathLike,
    output_dir: str | os.PathLike,
    similarity: str | None = None,
    bands: Sequence[Band | tuple] | str | None = None,
    resolution: int | None = None,
    channels: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    alpha: float = CARLINI_ALPHA,
    num_neighbors: int = CARLINI_NUM_NEIGHBORS,
    pipeline: str | None = None,
    max_figure_images: int = DEFAULT_FIGURE_IMAGES,
    feature_extractor: str | None = None,
    ums: str = DEFAULT_UMS,
    output_kind: str = EVALUATION,
) -> dict:
    """Score generations against a reference set and write the report.

    Args:
        generated (sequence of paths): generation folders (``DIR/generation.json`` + ``DIR/shards/*.parquet``
            with columns image, index, seed, method, target, guidance_scale) or any image data set
            `diffusers_side.storage.data.load_image_dataset` reads. Generations are grouped by their ``method``
            column (the folder name when absent); a method seen at several guidance scales is split
            per scale.
        reference (`str`): the training set, any source `load_image_dataset` accepts (an embedded
            model's name, ``"default"``, ``"digits-rare"``: its training subset).
        output_dir: where ``report.json``, ``report.md``, ``matches.parquet`` and ``figures/`` go.
        similarity (`str`, *optional*): ``"l2"`` (RMS L2 on pixels), ``"carlini"`` (normalized L2) or
            ``"cosine"`` (of ``feature_extractor`` embeddings). Default: ``"cosine"`` with a feature
            extractor, else ``"carlini"``. Any other value is an error.
        bands: `Band`s / ``(name, low, high)`` triples, or ``"name:low:high,..."``; defaults to
            the similarity's own (`diffusers_side.evaluation.bands.default_bands`).
        resolution (`int`, *optional*): resize generated and reference images to this square size.
        channels (`int`, *optional*): convert generated and reference images to 1 or 3 channels.
        chunk_size (`int`): rows per chunk of the nearest-match search (bounds its memory).
        batch_size (`int`): images decoded (and embedded) at once.
        device (`str`, *optional*): where to search and embed; defaults to CUDA when available.
        alpha (`float`), num_neighbors (`int`): Carlini's normalizer (0.5 and 50).
        pipeline (`str`, *optional*): the audited pipeline, needed by the ``"unet"`` extractor;
            defaults to the one recorded in the generation folders.
        max_figure_images (`int`): at most this many generations are drawn per band and method.
        feature_extractor (`str`, *optional*): embed the images with this extractor and compare them by
            cosine: ``"unet"``, ``"pixels"``, a transformers model id or folder (CLIP, DINOv2), or a
            TorchScript file such as SSCD (see `diffusers_side.labels.features.load_feature_extractor`).
        ums (`str`, defaults to `"best"`): how UMS counts a training image as extracted in a band: ``"best"``,
            as the best match of a generation in the band, or ``"pairs"``, in the band of any generation (the
            paper's Eqs. 8-9; one more pass over all pairs). The report names the counting and why ``"best"``
            is the default (`diffusers_side.evaluation.metrics.UMS_DEFAULT_REASON`).
        output_kind (`str`): what ``output_dir`` is (`diffusers_side.storage.outputs.KINDS`; `side demo` passes
            ``"demo"``); a folder of another kind (a pipeline, a label output, a generation run) is refused.

    Returns:
        `dict`: the report (also written to ``output_dir/report.json``).

    Raises:
        `ValueError`: before any heavy work, on an unknown similarity, a bad argument, bad bands, an empty set, or generated
        and reference images of different size or channels for a pixel similarity.

    Example:

    ```py
    >>> from diffusers_side.evaluation.evaluate import evaluate
    >>> report = evaluate(["runs/side", "runs/uncond"], "default", "runs/eval", similarity="carlini")
    >>> report["methods"]["side"]["ams"]["high"]
    0.021
    ```
    """
    kind = _resolve_similarity(similarity, feature_extractor)
    name = feature_extractor if feature_extractor is not None else kind
    bands, bands_source, bands_rationale = _resolve_bands(bands, kind)
    generated = [str(path) for path in generated]
    check_ums(ums)
    _check_arguments(generated, chunk_size, batch_size, max_figure_images, resolution, channels, alpha, num_neighbors)
    check_inputs_and_output(generated, str(reference), Path(output_dir), output_kind)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    matched = match_generations(
        generated, str(reference), kind, bands, feature_extractor, resolution, channels, chunk_size, batch_size, device,
        alpha, num_neighbors, pipeline,
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _save_matches_table(output_dir / MATCHES_FILE, matched.columns, matched.generated, matched.matches, bands, matched.assigned, matched.labels)
    methods = group_metrics(matched, bands, kind, ums, chunk_size, device)
    figures = write_figures(matched, bands, kind, name, output_dir, max_figure_images)
    candidates = evaluate_candidates(matched, bands, kind, output_dir)
    figures.update({f"candidates: {result['method']} ({Path(source).name})": result["figure"] for source, result in candidates.items()})
    settings = {
        "similarity": name, "bands": [band.to_dict() for band in bands], "resolution": resolution, "channels": channels,
        "chunk_size": chunk_size, "batch_size": batch_size, "device": str(device), "alpha": alpha,
        "num_neighbors": num_neighbors, "pipeline": matched.pipeline, "max_figure_images": max_figure_images,
        "ums": ums,
    }
    report = build_report(matched, name, kind, alpha, (bands, bands_source, bands_rationale), methods, figures, settings)
    if candidates:
        report["candidates"] = candidates
    write_outputs(report, output_dir, figures, output_kind)
    logger.info(f"Evaluation of {len(matched.matches.score)} generations written to {output_dir}.")
    return report


def ums_settings(ums: str) -> dict:
    """How this report counts UMS, the default counting and why it is the default."""
    return {"counting": ums, "definition": UMS_COUNTINGS[ums], "default": DEFAULT_UMS, "why_default": UMS_DEFAULT_REASON}


def build_report(
    matched: MatchedSets, name: str, kind: str, alpha: float, band_info: tuple, methods: dict, figures: dict, settings: dict
) -> dict:
    """The content of ``report.json``: similarity, bands, the sets, per-group metrics, settings, files, versions."""
    bands, bands_source, bands_rationale = band_info
    return {
        "similarity": _similarity_settings(name, kind, alpha, matched.matches),
        "bands": [band.to_dict() for band in bands],
        "bands_source": bands_source,
        "bands_rationale": bands_rationale,
        "ums": ums_settings(settings["ums"]),
        "reference": {
            "source": matched.reference.source,
            "num_images": len(matched.reference.dataset),
            "image_shape": list(matched.reference.shape),
        },
        "generated": [
            {"path": s.source, "num_images": len(s.dataset), "image_shape": list(s.shape), "settings": s.settings}
            for s in matched.generated
        ],
        "methods": methods,
        "settings": settings,
        "files": {"matches": MATCHES_FILE, "figures": figures},
        "versions": package_versions(),
    }
