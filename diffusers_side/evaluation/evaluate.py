"""Score generated images against the training set: the evaluation step of a SIDE audit (step 8).

[`evaluate`] reads one or more generation folders (written by ``side extract`` / ``side synthesize``,
or any image data set) and a reference (training) set, finds every generation's best training match
with the chunked search of `diffusers_side.evaluation.metrics`, computes AMS / UMS per band, the 95th-percentile
similarity and Gu et al.'s memorization ratio per method, and writes the per-generation matches, the
report and the figures (see `diffusers_side.evaluation.report`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from datasets import Dataset
from diffusers.utils import logging
from tqdm.auto import tqdm

from ..similarity.measures import (
    CARLINI_ALPHA,
    CARLINI_NUM_NEIGHBORS,
    COSINE,
    Matches,
    check_similarity,
    describe_similarity,
    direction_text,
    find_best_matches,
    smaller_is_more_similar,
)
from ..similarity.nearest_match import DEFAULT_CHUNK_SIZE
from ..storage.data import find_image_column, image_channels, images_to_tensor, load_image_dataset
from ..storage.generation_folder import RECORD_DEFAULTS, read_settings
from ..storage.outputs import EVALUATION
from ..utils.atomic_io import atomic_path
from .bands import BAND_RATIONALE, Band, assign_bands, band_interval, default_bands, display_order, parse_bands, validate_bands
from .candidates import evaluate_candidates, load_candidate_tables
from .inputs import MATCHES_FILE, check_distinct_runs, check_image_set, check_inputs_and_output, write_outputs
from .metrics import DEFAULT_UMS, UMS_COUNTINGS, UMS_DEFAULT_REASON, check_ums, extraction_metrics, training_images_in_bands
from .report import FIGURES_DIR, figure_name, package_versions, save_match_figure

logger = logging.get_logger(__name__)

DEFAULT_BATCH_SIZE = 256
DEFAULT_FIGURE_IMAGES = 8


class PixelImages:
    """A data set's images as pixel tensors ``(N, C, H, W)`` in ``[0, 1]``, decoded one slice at a time.

    Slicing returns a tensor (so it can be handed to `diffusers_side.labels.features.embed_images`); every
    image is converted to ``channels`` and, when ``resolution`` is set, resized to it.
    """

    def __init__(self, dataset: Dataset, column: str, resolution: int | None, channels: int):
        self.dataset = dataset
        self.column = column
        self.resolution = resolution
        self.channels = channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: slice) -> torch.Tensor:
        return images_to_tensor(self.dataset[item][self.column], self.resolution, self.channels)


@dataclass
class ImageSet:
    """One loaded image set: its source, data set, image column, (C, H, W) after conversion, settings."""

    source: str
    dataset: Dataset
    column: str
    shape: tuple[int, int, int]
    settings: dict

    def pixel_images(self, resolution: int | None) -> PixelImages:
        """The images as pixel tensors, optionally resized to ``resolution``."""
        return PixelImages(self.dataset, self.column, resolution, self.shape[0])

    def image(self, row: int):
        """The PIL image of row ``row``."""
        return self.dataset[row][self.column]


def _load_set(source: str, resolution: int | None, channels: int | None, role: str) -> ImageSet:
    """Load a set and read the (C, H, W) of its first image after the requested conversion."""
    dataset = load_image_dataset(source)
    if len(dataset) == 0:
        hint = "generate images first (side extract)" if role == "generated" else "pass a non-empty training set"
        raise ValueError(f"The {role} set {source!r} is empty; {hint}.")
    column = find_image_column(dataset)
    check_image_set(source, dataset, column, generated=role == "generated")
    image = dataset[0][column]
    width, height = image.size if resolution is None else (resolution, resolution)
    shape = (channels or image_channels(image), height, width)
    return ImageSet(source, dataset, column, shape, read_settings(source) if role == "generated" else {})


def _describe_shape(shape: tuple[int, int, int]) -> str:
    return f"{shape[2]}x{shape[1]} with {shape[0]} channel(s)"


def _check_same_shape(generated: ImageSet, reference: ImageSet) -> None:
    if generated.shape == reference.shape:
        return
    fixes = []
    if generated.shape[1:] != reference.shape[1:]:
        fixes.append(f"--resolution {reference.shape[1]} (resolution=) to resize both to one size")
    if generated.shape[0] != reference.shape[0]:
        fixes.append(f"--channels {reference.shape[0]} (channels=) to convert both to one channel count")
    raise ValueError(
        f"Generated images in {generated.source!r} are {_describe_shape(generated.shape)} but the reference "
        f"{reference.source!r} images are {_describe_shape(reference.shape)}; pixel similarities compare images of "
        f"one shape: pass {' and '.join(fixes)}."
    )


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
        return default_bands(kind), f"default for {kind}", BAND_RATIONALE[kind]
    bands = parse_bands(bands) if isinstance(bands, str) else validate_bands(bands)
    return bands, "user", "Edges given by the user (--bands)."


def _pixel_rows(images: PixelImages, batch_size: int, expected_shape: tuple, name: str) -> torch.Tensor:
    """All images of a set as flattened uint8 rows (exact for 8-bit images, 4x smaller than float32)."""
    rows = []
    for start in tqdm(range(0, len(images), batch_size), desc=f"Reading {name}", unit="batch"):
        batch = images[start : start + batch_size]
        if tuple(batch.shape[1:]) != expected_shape:
            raise ValueError(
                f"Images of {name!r} have mixed sizes: {_describe_shape(expected_shape)} at first, "
                f"{_describe_shape(tuple(batch.shape[1:]))} from image {start}; pass --resolution to resize them."
            )
        rows.append((batch * 255).round_().to(torch.uint8).flatten(1))
    return torch.cat(rows)


def _load_extractor(spec: str, pipeline: str | None, generated: list[ImageSet], device: str) -> tuple:
    """The feature extractor, and the pipeline it was built from (only ``"unet"`` needs one).

    The ``"unet"`` extractor uses ``pipeline`` or, without it, the one every generation folder's
    ``generation.json`` names.
    """
    from ..labels.features import UNET, load_feature_extractor
    from ..pipelines.target import AuditTarget

    if spec != UNET:
        return load_feature_extractor(spec, device=device), pipeline
    from_record = pipeline is None
    if from_record:
        recorded = {str(s.settings["pipeline"]) for s in generated if s.settings.get("pipeline") is not None}
        if len(recorded) != 1:
            found = f"they name {sorted(recorded)}" if recorded else "none is recorded in generation.json"
            raise ValueError(f"The 'unet' similarity needs the audited model's pipeline ({found}): pass --pipeline.")
        pipeline = recorded.pop()
    target = AuditTarget.load(pipeline, what="--pipeline", recorded=from_record)  # latent: the UNet reads latents
    return load_feature_extractor(spec, unet=target.unet, scheduler=target.scheduler, device=device, codec=target.codec), pipeline


def _comparable_rows(reference: ImageSet, generated: list[ImageSet], extractor, resolution, batch_size) -> tuple:
    """Reference and generated rows to search: uint8 pixels, or L2-normalised embeddings with an extractor."""
    if extractor is None:
        reference_rows = _pixel_rows(reference.pixel_images(resolution), batch_size, reference.shape, reference.source)
        generated_rows = [_pixel_rows(s.pixel_images(resolution), batch_size, s.shape, s.source) for s in generated]
        return reference_rows, torch.cat(generated_rows)
    from ..labels.features import embed_images

    reference_rows = embed_images(extractor, reference.pixel_images(resolution), batch_size)
    return reference_rows, torch.cat([embed_images(extractor, s.pixel_images(resolution), batch_size) for s in generated])


def _metadata_columns(generated: list[ImageSet]) -> dict[str, np.ndarray]:
    """Per generation: source set, row, and the generation columns (absent ones get defaults; method: folder name)."""
    columns = {name: [] for name in (*RECORD_DEFAULTS, "source_id", "row")}
    for source_id, image_set in enumerate(generated):
        size = len(image_set.dataset)
        for name, default in RECORD_DEFAULTS.items():
            if name in image_set.dataset.column_names:
                columns[name] += list(image_set.dataset[name])
            else:
                columns[name] += [Path(image_set.source).name if name == "method" else default] * size
        columns["source_id"] += [source_id] * size
        columns["row"] += list(range(size))
    columns["method"] = [str(method) for method in columns["method"]]
    return {name: np.asarray(values, dtype=np.float64 if name == "guidance_scale" else None) for name, values in columns.items()}


def _group_labels(methods: np.ndarray, scales: np.ndarray, source_ids: np.ndarray, generated: list[ImageSet]) -> np.ndarray:
    """One group per method; a method seen at several guidance scales is split per scale, and a group
    spread over several folders is split per folder (their images are never pooled into one row)."""
    labels = methods.astype(object)
    for method in np.unique(methods):
        rows = methods == method
        distinct = np.unique(scales[rows][~np.isnan(scales[rows])])
        if len(distinct) > 1:
            labels[rows] = [f"{method} (guidance {scale:g})" for scale in scales[rows]]
    names = [Path(s.source).name for s in generated]
    for label in np.unique(labels.astype(str)):
        rows = labels.astype(str) == label
        sources = np.unique(source_ids[rows])
        if len(sources) > 1:
            shown = [names[i] if names.count(names[i]) == 1 else generated[i].source for i in range(len(generated))]
            labels[rows] = [f"{label} [{shown[i]}]" for i in source_ids[rows]]
    return labels


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
        "alpha": alpha if kind == "carlini" else None,
        "num_neighbors": matches.num_neighbors if kind == "carlini" else None,
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
    check_similarity(similarity)
    if feature_extractor is not None and similarity != COSINE:
        raise ValueError(
            f"feature_extractor={feature_extractor!r} embeds images for the 'cosine' similarity, but similarity="
            f"{similarity!r} compares pixels; drop one of them or pass similarity='cosine'."
        )
    if similarity == COSINE and feature_extractor is None:
        raise ValueError("similarity='cosine' compares embeddings: pass feature_extractor= (unet, pixels, a model id or a file).")
    return similarity


@dataclass
class MatchedSets:
    """The loaded sets, every generation's best training match and how the generations are grouped.

    ``generated_rows`` / ``reference_rows`` are the compared rows (pixels or embeddings), kept for the
    all-pairs UMS count.
    """

    reference: ImageSet
    generated: list[ImageSet]
    matches: Matches
    columns: dict[str, np.ndarray]
    labels: np.ndarray
    assigned: np.ndarray
    pipeline: str | None
    generated_rows: torch.Tensor
    reference_rows: torch.Tensor
    candidate_tables: dict | None = None  # set position -> its blind candidate list (`diffusers_side.candidates`)

    def fetch_pair(self, i: int) -> tuple:
        """Generation ``i``, its best training match and a caption with the score and training index."""
        match = int(self.matches.best_index[i])
        generated_image = self.generated[self.columns["source_id"][i]].image(int(self.columns["row"][i]))
        return generated_image, self.reference.image(match), f"{self.matches.score[i]:.3f} #{match}"


def match_generations(
    generated: Sequence[str],
    reference: str,
    kind: str,
    bands: list[Band],
    feature_extractor: str | None = None,
    resolution: int | None = None,
    channels: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    alpha: float = CARLINI_ALPHA,
    num_neighbors: int = CARLINI_NUM_NEIGHBORS,
    pipeline: str | None = None,
) -> MatchedSets:
    """Load the sets, embed them when a feature extractor is given, and find every generation's best match.

    Returns:
        [`MatchedSets`] (``pipeline`` is the one the ``"unet"`` extractor used, else the argument).
    """
    reference_set = _load_set(str(reference), resolution, channels, "reference")
    if len(reference_set.dataset) < 2:
        raise ValueError(f"The reference set {reference_set.source!r} has 1 image; it needs at least 2 (for the second-best match).")
    generated_sets = [_load_set(path, resolution, channels, "generated") for path in generated]
    check_distinct_runs(generated_sets)
    candidate_tables = load_candidate_tables(generated_sets)
    extractor = None
    if feature_extractor is not None:
        extractor, pipeline = _load_extractor(feature_extractor, pipeline, generated_sets, device)
    else:
        for image_set in generated_sets:
            _check_same_shape(image_set, reference_set)
    reference_rows, generated_rows = _comparable_rows(reference_set, generated_sets, extractor, resolution, batch_size)
    matches = find_best_matches(generated_rows, reference_rows, kind, chunk_size, alpha, num_neighbors, device)
    columns = _metadata_columns(generated_sets)
    labels = _group_labels(columns["method"], columns["guidance_scale"], columns["source_id"], generated_sets)
    assigned = assign_bands(matches.score, bands)
    return MatchedSets(
        reference_set, generated_sets, matches, columns, labels, assigned, pipeline, generated_rows, reference_rows, candidate_tables
    )


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
            `diffusers_side.evaluation.bands.DEFAULT_BANDS` for the similarity.
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
