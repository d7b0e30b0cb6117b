"""Load the generated and reference sets, check they compare, and find every generation's best training match.

`evaluate` (`diffusers_side.evaluation.evaluate`) scores and reports what `match_generations` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from ..similarity.measures import CARLINI_ALPHA, CARLINI_NUM_NEIGHBORS, Matches, find_best_matches
from ..similarity.nearest_match import DEFAULT_CHUNK_SIZE
from ..storage.data import find_image_column, image_channels, images_to_tensor, load_image_dataset
from ..storage.generation_folder import RECORD_DEFAULTS, read_settings
from .bands import Band, assign_bands
from .candidates import load_candidate_tables
from .inputs import check_distinct_runs, check_image_set

DEFAULT_BATCH_SIZE = 256


class PixelImages:
    """A data set's images as pixel tensors ``(N, C, H, W)`` in ``[0, 1]``, decoded one slice at a time.

    Slicing returns a tensor (so it can be handed to `diffusers_side.labels.features.embed_images`); every
    image is converted to ``channels`` and, when ``resolution`` is set, resized to it. A slice whose images differ in
    size from ``shape`` (the first image's ``(C, H, W)``) is refused naming ``source``, the sizes and the fix, whichever
    similarity reads the set (pixels or a feature extractor).
    """

    def __init__(self, dataset: Dataset, column: str, resolution: int | None, shape: tuple, source: str | None = None):
        self.dataset = dataset
        self.source = source
        self.column = column
        self.resolution = resolution
        self.shape = tuple(shape)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: slice) -> torch.Tensor:
        batch = images_to_tensor(self.dataset[item][self.column], self.resolution, self.shape[0], source=self.source)
        if tuple(batch.shape[1:]) != self.shape:
            start = (item.start or 0) if isinstance(item, slice) else item
            raise ValueError(
                f"Images of {self.source!r} have mixed sizes: {_describe_shape(self.shape)} at first, "
                f"{_describe_shape(tuple(batch.shape[1:]))} from image {start}; pass --resolution to resize them."
            )
        return batch


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
        return PixelImages(self.dataset, self.column, resolution, self.shape, self.source)

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


def _pixel_rows(images: PixelImages, batch_size: int) -> torch.Tensor:
    """All images of a set as flattened uint8 rows (exact for 8-bit images, 4x smaller than float32)."""
    rows = []
    for start in tqdm(range(0, len(images), batch_size), desc=f"Reading {images.source}", unit="batch"):
        rows.append((images[start : start + batch_size] * 255).round_().to(torch.uint8).flatten(1))
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
        reference_rows = _pixel_rows(reference.pixel_images(resolution), batch_size)
        generated_rows = [_pixel_rows(s.pixel_images(resolution), batch_size) for s in generated]
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
