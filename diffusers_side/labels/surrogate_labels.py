"""Surrogate labels (SIDE steps 3-5): cluster synthetic images, keep the cohesive clusters, relabel.

Given features of ``N_syn`` images sampled from the unconditional target model:

3. **Cluster** with scikit-learn's `KMeans` (``K`` clusters, seeded, ``n_init=10`` restarts so the
   result does not hinge on one k-means++ draw).
4. **Cohesion filter.** The cohesion of cluster ``k`` is the mean cosine similarity of its members
   to its centroid; clusters with cohesion ``>= tau`` (and at least ``min_cluster_size`` members)
   are kept. Their centroids are the surrogate conditions.
5. **Relabel** every synthetic image with its nearest kept centroid (cosine), as labels
   ``0 .. K'-1`` in the order of the kept cluster ids.

**Centring.** Features are centred on the mean of the synthetic set, then L2-normalised, before
clustering and in every cosine. Extractor outputs share a large common component (non-negative
activations, aligned images on one background): in uncentred space every pair of images has a
cosine near 1, so every cluster has cohesion near 1 and any ``tau`` such as the paper's 0.5 keeps
everything. Centred cosines measure how images differ from the typical sample, so a cluster of
near-duplicates (a memorized mode) scores near 1 and a cluster of merely similar images scores
much lower. The mean is stored with the centroids so new images can be labelled the same way.

**``tau="auto"``** puts the threshold at Otsu's split of the K cohesion values: the cut that
maximises the between-group variance of (diffuse, tight), i.e. the best two-group 1-D k-means
split, restricted to cuts that leave at least 2 clusters above it and computed over clusters that
have at least ``min_cluster_size`` members. The threshold is the midpoint between the two groups
and is recorded. Why it is the default: centred cosine values depend on the extractor and its
dimension (0.5 means different things for SSCD, DINOv2 or UNet activations), so the paper's 0.5
does not transfer, while the gap between tight and diffuse clusters is visible in any feature space.

The output of [`label_synthetic`] is a ``datasets`` directory (columns image, label, distance,
seed), the sidecar ``surrogate_labels.json`` + ``surrogate_labels.safetensors`` read by
[`SurrogateLabels.load`], and ``contact_sheet.png``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Image, Value
from diffusers.utils import logging
from sklearn.cluster import KMeans

from ..pipelines.loading import weights_fingerprint
from ..pipelines.target import AuditTarget
from ..storage.data import find_image_column, load_image_dataset, load_saved_dataset
from ..storage.generation_folder import SETTINGS_FILE, read_settings
from ..storage.image_files import check_image_files
from ..storage.outputs import LABELS, write_manifest, written_files
from ..utils.atomic_io import atomic_directory, write_json_atomic
from ..utils.safetensors_io import save_safetensors_atomic
from ..utils.state_files import SURROGATE_LABELS
from .cohesion import MIN_LABELS, otsu_threshold  # noqa: F401 (otsu_threshold: re-exported)
from .features import UNET, embed_images, load_feature_extractor
from .label_folder import CONTACT_SHEET, CONTACT_SHEET_GAP, check_output_dir, read_label_tensors, write_contact_sheet  # noqa: F401

logger = logging.get_logger(__name__)

AUTO = "auto"
DEFAULT_NUM_CLUSTERS = 100
KMEANS_N_INIT = 10
LABELS_JSON = SURROGATE_LABELS.name
LABELS_TENSORS = "surrogate_labels.safetensors"
FORMAT_VERSION = 1
OUTPUT_FEATURES = Features({"image": Image(), "label": Value("int64"), "distance": Value("float32"), "seed": Value("int64")})


@dataclass
class SurrogateLabels:
    """The surrogate conditions found in a synthetic set, and how they were found.

    Args:
        centroids (`torch.Tensor`): ``(K', D)`` unit-norm centroids of the kept clusters, in centred
            feature space; row ``j`` is label ``j``.
        feature_mean (`torch.Tensor`): ``(D,)`` mean feature of the synthetic set (the centring).
        kept_cluster_ids (`list[int]`): KMeans ids of the kept clusters; label ``j`` is cluster
            ``kept_cluster_ids[j]``.
        cluster_sizes (`list[int]`): members of each of the K clusters.
        cohesion (`list[float]`): cohesion of each of the K clusters.
        label_counts (`list[int]`): synthetic images per label after relabelling.
        extractor (`str`): the feature extractor spec.
        num_clusters (`int`): K.
        cohesion_threshold (`float` or ``"auto"``): tau as requested.
        resolved_cohesion_threshold (`float`): tau as applied.
        min_cluster_size (`int`): clusters with fewer members were not eligible.
        num_synthetic (`int`): N_syn.
        seed (`int`): KMeans seed.
        n_init (`int`): KMeans restarts.
    """

    centroids: torch.Tensor
    feature_mean: torch.Tensor
    kept_cluster_ids: list[int]
    cluster_sizes: list[int]
    cohesion: list[float]
    label_counts: list[int]
    extractor: str
    num_clusters: int
    cohesion_threshold: float | str
    resolved_cohesion_threshold: float
    min_cluster_size: int
    num_synthetic: int
    seed: int
    n_init: int = KMEANS_N_INIT

    @property
    def num_labels(self) -> int:
        """K', the number of surrogate labels."""
        return len(self.kept_cluster_ids)

    def assign(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label features (from the same extractor) by their nearest kept centroid.

        Args:
            features (`torch.Tensor`): ``(N, D)`` extractor output.

        Returns:
            `tuple[torch.Tensor, torch.Tensor]`: int64 labels ``(N,)`` in ``0 .. K'-1`` and float32
            cosine distances ``(N,)`` to the assigned centroid.
        """
        if features.ndim != 2 or features.shape[1] != self.feature_mean.shape[0]:
            raise ValueError(
                f"Features of shape {tuple(features.shape)} do not match the {self.feature_mean.shape[0]}-dimensional "
                f"{self.extractor!r} features these labels were built from."
            )
        similarity = _centre(features, self.feature_mean) @ self.centroids.T
        best, labels = similarity.max(dim=1)
        return labels.long(), (1 - best).float()

    def to_label_info(self) -> dict:
        """JSON-serialisable summary carried by the classifier's config and model card."""
        return {
            "num_labels": self.num_labels,
            "kept_cluster_ids": list(self.kept_cluster_ids),
            "kept_cohesion": [round(self.cohesion[k], 4) for k in self.kept_cluster_ids],
            "label_counts": list(self.label_counts),
            "extractor": self.extractor,
            "num_clusters": self.num_clusters,
            "cohesion_threshold": self.cohesion_threshold,
            "resolved_cohesion_threshold": round(self.resolved_cohesion_threshold, 4),
            "min_cluster_size": self.min_cluster_size,
            "num_synthetic": self.num_synthetic,
            "seed": self.seed,
        }

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``surrogate_labels.json`` and ``surrogate_labels.safetensors`` into ``directory`` (atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format_version": FORMAT_VERSION,
            **{k: v for k, v in vars(self).items() if not torch.is_tensor(v)},
            "feature_dim": int(self.feature_mean.shape[0]),
            "centring": "features minus feature_mean, then L2-normalised, before clustering and cosine",
        }
        tensors = {"centroids": self.centroids.contiguous(), "feature_mean": self.feature_mean.contiguous()}
        save_safetensors_atomic(tensors, directory / LABELS_TENSORS)
        write_json_atomic(directory / LABELS_JSON, metadata)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "SurrogateLabels":
        """Read the sidecar written by [`~SurrogateLabels.save`] (e.g. a ``side label`` output directory).

        Raises:
            `FileNotFoundError`: a sidecar file is missing. `ValueError`: one is damaged or they disagree (the
            message names the file).
        """
        directory = Path(directory)
        for name in (LABELS_JSON, LABELS_TENSORS):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} has no {name}; pass the output directory of `side label`.")
        metadata = SURROGATE_LABELS.read(directory / LABELS_JSON)
        if metadata.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"{directory / LABELS_JSON} was written by a newer diffusers-side; upgrade the package.")
        tensors = read_label_tensors(directory / LABELS_TENSORS, len(metadata["kept_cluster_ids"]))
        fields = {k: metadata[k] for k in cls.__dataclass_fields__ if k in metadata}
        return cls(**fields, centroids=tensors["centroids"], feature_mean=tensors["feature_mean"])


def fit_surrogate_labels(
    features: torch.Tensor,
    num_clusters: int = DEFAULT_NUM_CLUSTERS,
    cohesion: float | str = AUTO,
    seed: int = 0,
    min_cluster_size: int = 2,
    extractor: str = "unknown",
    n_init: int = KMEANS_N_INIT,
) -> SurrogateLabels:
    """SIDE steps 3-5 on a feature matrix: centre, KMeans, cohesion filter, relabel.

    Args:
        features (`torch.Tensor`): ``(N_syn, D)`` features of the synthetic images.
        num_clusters (`int`, defaults to 100): K (the paper's value).
        cohesion (`float` or ``"auto"``, defaults to ``"auto"``): tau; see the module docstring.
        seed (`int`, defaults to 0): KMeans seed.
        min_cluster_size (`int`, defaults to 2): smaller clusters are never kept (a single image
            has cohesion 1 with itself, which says nothing about a mode of the model).
        extractor (`str`): the extractor spec, recorded.
        n_init (`int`, defaults to 10): KMeans restarts.

    Returns:
        [`SurrogateLabels`]

    Raises:
        `ValueError`: bad K, tau or features, or fewer than 2 clusters kept.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_side.labels.surrogate_labels import fit_surrogate_labels
    >>> features = torch.nn.functional.normalize(torch.randn(200, 32), dim=1)
    >>> labels = fit_surrogate_labels(features, num_clusters=10, cohesion=0.0)
    >>> labels.num_labels, labels.assign(features)[0].shape
    (10, torch.Size([200]))
    ```
    """
    check_label_settings(num_clusters, cohesion, min_cluster_size, num_synthetic=features.shape[0])
    if features.ndim != 2 or not torch.isfinite(features).all():
        raise ValueError(f"Features must be a finite (N, D) tensor, got shape {tuple(features.shape)}.")
    feature_mean = features.float().mean(dim=0)
    centred = _centre(features, feature_mean)
    kmeans = KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed).fit(centred.numpy())
    members = torch.from_numpy(kmeans.labels_).long()
    centroids = F.normalize(torch.from_numpy(kmeans.cluster_centers_).float(), dim=1)
    sizes = torch.bincount(members, minlength=num_clusters)
    similarity_to_own = (centred * centroids[members]).sum(dim=1)
    cohesion_values = torch.zeros(num_clusters).index_add_(0, members, similarity_to_own) / sizes.clamp(min=1)
    eligible = sizes >= min_cluster_size
    threshold = otsu_threshold(cohesion_values[eligible].tolist()) if cohesion == AUTO else float(cohesion)
    kept = torch.nonzero(eligible & (cohesion_values >= threshold)).flatten()
    if len(kept) < MIN_LABELS:
        raise ValueError(_too_few_kept_message(cohesion_values, sizes, threshold, min_cluster_size))
    labels = SurrogateLabels(
        centroids=centroids[kept],
        feature_mean=feature_mean,
        kept_cluster_ids=kept.tolist(),
        cluster_sizes=sizes.tolist(),
        cohesion=[float(c) for c in cohesion_values],
        label_counts=[],
        extractor=extractor,
        num_clusters=num_clusters,
        cohesion_threshold=cohesion,
        resolved_cohesion_threshold=float(threshold),
        min_cluster_size=min_cluster_size,
        num_synthetic=int(features.shape[0]),
        seed=seed,
        n_init=n_init,
    )
    labels.label_counts = torch.bincount(labels.assign(features)[0], minlength=labels.num_labels).tolist()
    logger.info(f"Kept {labels.num_labels} of {num_clusters} clusters at cohesion >= {threshold:.3f}.")
    return labels


def check_label_settings(num_clusters: int, cohesion: float | str, min_cluster_size: int, num_synthetic: int) -> None:
    """Validate K, tau and the minimum cluster size against the size of the synthetic set.

    Raises:
        `ValueError`: naming the bad value and the fix.
    """
    if not isinstance(num_clusters, int) or num_clusters < MIN_LABELS:
        raise ValueError(f"--clusters must be an integer >= {MIN_LABELS}, got {num_clusters!r}.")
    if num_clusters > num_synthetic:
        raise ValueError(
            f"--clusters {num_clusters} is more than the {num_synthetic} synthetic images; use at most "
            f"{num_synthetic} clusters or synthesize more images."
        )
    if cohesion != AUTO and (isinstance(cohesion, str) or not -1.0 <= float(cohesion) <= 1.0):
        raise ValueError(f"--cohesion must be 'auto' or a cosine value in [-1, 1], got {cohesion!r}.")
    if min_cluster_size < 1:
        raise ValueError(f"--min-cluster-size must be at least 1, got {min_cluster_size}.")


def label_synthetic(
    synthetic_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_clusters: int = DEFAULT_NUM_CLUSTERS,
    cohesion: float | str = AUTO,
    features: str = UNET,
    seed: int = 0,
    batch_size: int = 256,
    pipeline: str | None = None,
    min_cluster_size: int = 2,
    device: str | None = None,
) -> tuple[Dataset, SurrogateLabels]:
    """Turn a synthetic set into a labelled data set of surrogate conditions (SIDE steps 2-5).

    Args:
        synthetic_dir (`str` or `os.PathLike`): output of ``side synthesize`` (or any image data set
            [`~diffusers_side.storage.data.load_image_dataset`] reads).
        output_dir (`str` or `os.PathLike`): where to write; must be absent, empty, or an earlier
            ``side label`` output (which is replaced).
        num_clusters (`int`, defaults to 100): K.
        cohesion (`float` or ``"auto"``, defaults to ``"auto"``): tau.
        features (`str`, defaults to ``"unet"``): extractor spec, see
            [`~diffusers_side.labels.features.load_feature_extractor`].
        seed (`int`, defaults to 0): KMeans seed.
        batch_size (`int`, defaults to 256): embedding batch size.
        pipeline (`str`, *optional*): the target pipeline (path, repo id or embedded name) for
            ``features="unet"``; defaults to the ``"pipeline"`` recorded in ``generation.json``.
        min_cluster_size (`int`, defaults to 2): see [`fit_surrogate_labels`].
        device (`str`, *optional*): where to run the extractor (CPU by default).

    Returns:
        `tuple[datasets.Dataset, SurrogateLabels]`: the written data set (columns image, label,
        distance, seed) and its labels.

    Example:

    ```py
    >>> from diffusers_side.labels.surrogate_labels import format_label_table, label_synthetic
    >>> dataset, labels = label_synthetic("side-demo/synthetic", "side-demo/labels", num_clusters=20)
    >>> dataset.column_names
    ['image', 'label', 'distance', 'seed']
    >>> print(format_label_table(labels))
    ```
    """
    synthetic_dir, output_dir = Path(synthetic_dir), Path(output_dir)
    output_dir = check_output_dir(output_dir, synthetic_dir)
    source = load_image_dataset(synthetic_dir)
    image_column = find_image_column(source)
    check_label_settings(num_clusters, cohesion, min_cluster_size, num_synthetic=len(source))
    sizes = check_image_files(source, image_column, str(synthetic_dir))
    if len(sizes) > 1:
        raise ValueError(f"The synthetic images have mixed sizes {sorted(sizes)[:5]}; label images of one size.")
    settings = _generation_settings(synthetic_dir, len(source))
    target = _load_target(pipeline, settings, synthetic_dir) if features == UNET else None
    unet, scheduler, codec = (target.unet, target.scheduler, target.codec) if target else (None, None, None)
    extractor = load_feature_extractor(features, unet=unet, scheduler=scheduler, device=device, codec=codec)

    embedded = embed_images(extractor, source[image_column], batch_size=batch_size)
    labels = fit_surrogate_labels(embedded, num_clusters, cohesion, seed, min_cluster_size, extractor.name)
    assigned, distances = labels.assign(embedded)

    output = _labelled_dataset(source, image_column, assigned, distances)
    check_output_dir(output_dir, synthetic_dir)  # again: nothing was added to the folder while the run worked
    with atomic_directory(output_dir) as staging:
        _write_all(staging, output, labels, assigned, distances)
    return load_saved_dataset(output_dir), labels


def format_label_table(labels: SurrogateLabels) -> str:
    """A short text table of kept and dropped clusters: count, members, cohesion and size ranges."""
    kept = set(labels.kept_cluster_ids)
    rows = [f"{'':8}{'clusters':>9}{'members':>9}  {'cohesion':<13}  {'size':<9}"]
    for name, group in (("kept", kept), ("dropped", set(range(labels.num_clusters)) - kept)):
        cohesion = [labels.cohesion[k] for k in group]
        sizes = [labels.cluster_sizes[k] for k in group]
        cohesion_range = f"{min(cohesion):.3f}..{max(cohesion):.3f}" if group else "-"
        size_range = f"{min(sizes)}..{max(sizes)}" if group else "-"
        rows.append(f"{name:8}{len(group):>9}{sum(sizes):>9}  {cohesion_range:<13}  {size_range:<9}")
    tau = labels.resolved_cohesion_threshold
    rule = " (auto: Otsu split)" if labels.cohesion_threshold == AUTO else ""
    rows.append(
        f"tau = {tau:.3f}{rule}, K = {labels.num_clusters}, min cluster size {labels.min_cluster_size}, "
        f"features {labels.extractor!r}; all {labels.num_synthetic} images relabelled to {labels.num_labels} "
        f"labels ({min(labels.label_counts)}..{max(labels.label_counts)} images per label)"
    )
    return "\n".join(rows)


def _centre(features: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float() - mean, dim=1)


def _too_few_kept_message(cohesion: torch.Tensor, sizes: torch.Tensor, threshold: float, min_cluster_size: int) -> str:
    ordered = sorted(zip(cohesion.tolist(), sizes.tolist()), reverse=True)
    listing = ", ".join(f"{c:.3f} (n={n})" for c, n in ordered)
    return (
        f"Fewer than {MIN_LABELS} of {len(ordered)} clusters have cohesion >= {threshold:.3f} and at least "
        f"{min_cluster_size} members, but SIDE needs at least {MIN_LABELS} surrogate labels. Cluster cohesion "
        f"(size), highest first: {listing}. Lower --cohesion (or use --cohesion auto) or use fewer --clusters."
    )


def _generation_settings(synthetic_dir: Path, num_images: int) -> dict:
    """The settings ``side synthesize`` recorded (empty for other sources); warns on an unfinished set."""
    settings = read_settings(synthetic_dir)
    expected = settings.get("num_images")
    if expected is not None and expected != num_images:
        logger.warning(f"{synthetic_dir} holds {num_images} of the {expected} images asked for; is synthesis unfinished?")
    return settings


def _load_target(pipeline: str | None, settings: dict, synthetic_dir: Path) -> AuditTarget:
    """The target (safetensors only; pixel or latent) whose UNet the ``unet`` feature extractor runs.

    When ``generation.json`` recorded a weights fingerprint, the UNet must still have those weights.
    """
    from_record = pipeline is None
    pipeline = pipeline or settings.get("pipeline")
    if pipeline is None:
        raise ValueError(
            f"{synthetic_dir} has no {SETTINGS_FILE} naming the target pipeline; pass --pipeline for "
            "--features unet, or choose other --features."
        )
    target = AuditTarget.load(pipeline, what="--pipeline", recorded=from_record)
    recorded = settings.get("model_fingerprint")
    if recorded is not None and weights_fingerprint(target.unet) != recorded:
        raise ValueError(
            f"The UNet of {pipeline} is not the model that generated {synthetic_dir} (its weights fingerprint differs "
            f"from the sha256 {recorded} in {SETTINGS_FILE}); pass --pipeline with that model, or choose other --features."
        )
    return target


def _labelled_dataset(source: Dataset, image_column: str, assigned: torch.Tensor, distances: torch.Tensor) -> Dataset:
    """The output columns: the source images (not decoded), label, distance and seed (-1 when unknown)."""
    if "seed" in source.column_names:
        seeds = source["seed"][:]
    else:
        logger.warning("The synthetic set has no seed column; writing seed -1.")
        seeds = [-1] * len(source)
    output = source.select_columns([image_column])
    if image_column != "image":
        output = output.rename_column(image_column, "image")
    output = output.add_column("label", assigned.numpy()).add_column("distance", distances.numpy())
    return output.add_column("seed", np.asarray(seeds, dtype=np.int64)).cast(OUTPUT_FEATURES)


def _write_all(directory: Path, output: Dataset, labels: SurrogateLabels, assigned: torch.Tensor, distances: torch.Tensor) -> None:
    output.save_to_disk(str(directory))
    labels.save(directory)
    write_contact_sheet(output, labels, assigned, distances, directory / CONTACT_SHEET)
    write_manifest(directory, LABELS, written_files(directory))
