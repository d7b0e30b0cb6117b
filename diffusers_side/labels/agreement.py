"""Did a guided generation land in its target cluster? Judged by the labeller, not by the classifier that steered.

Classifier guidance follows the gradient of the steering classifier; pushed hard enough (large lambda), it finds
images that classifier scores as the target but that no longer look like the target cluster's members: the
classifier is fooled, an adversarial example in all but name. Counting near-duplicate groups among the generations
does not see this (generations pulled to one point copy each other whether or not the point is a training image:
the collapse the paper-preset sweep showed at lambda 50, docs/attacker-study.md). An *independent* judge does: the
model that built the surrogate labels, i.e. the same feature extractor and the kept centroids
(`diffusers_side.labels.surrogate_labels.SurrogateLabels`).

[`target_agreement`] embeds each generation with the labeller's extractor and counts it *in its target cluster*
when (1) its nearest kept centroid is its target and (2) its cosine distance to that centroid is within the radius
that holds ``quantile`` (90 %) of the synthetic images labelled with that target (the ``distance`` column of the
`side label` output). No training image is read. Past the lambda where this in-cluster rate peaks, more guidance
makes generations match the steering classifier, not the cluster: `diffusers_side.workflows.demo_sweep` uses it as
the blind sweep's guard against collapse.

Example:

```py
>>> from diffusers_side.labels.agreement import target_agreement
>>> target_agreement("side-demo/extract-side", "side-demo/labels", pipeline="digits-rare")["in_cluster_rate"]
```
"""

from __future__ import annotations

import os

import numpy as np

from ..pipelines.target import AuditTarget
from ..storage.data import find_image_column, load_image_dataset, load_saved_dataset
from ..storage.generation_folder import read_settings
from .features import UNET, embed_images, load_feature_extractor
from .surrogate_labels import SurrogateLabels

IN_CLUSTER_QUANTILE = 0.9  # the radius of a cluster: the distance within which 90 % of its labelled images lie


def cluster_radii(labels_dir: str | os.PathLike, num_labels: int, quantile: float = IN_CLUSTER_QUANTILE) -> np.ndarray:
    """``(K',)`` per label, the cosine distance to its centroid within which ``quantile`` of its labelled images lie.

    Raises:
        `ValueError`: ``quantile`` outside (0, 1], or the label output has no ``label`` / ``distance`` columns.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile={quantile!r} must lie in (0, 1] (default {IN_CLUSTER_QUANTILE}).")
    members = load_saved_dataset(labels_dir)
    if not {"label", "distance"} <= set(members.column_names):
        raise ValueError(f"{labels_dir} has no label and distance columns; pass the output directory of `side label`.")
    label, distance = np.asarray(members["label"]), np.asarray(members["distance"], dtype=np.float64)
    radii = np.full(num_labels, -np.inf)  # a label without members holds nothing in its cluster
    for j in np.unique(label[(label >= 0) & (label < num_labels)]):
        radii[j] = np.quantile(distance[label == j], quantile)
    return radii


def labeller_extractor(labels: SurrogateLabels, pipeline: str | None, device: str | None = None):
    """The feature extractor ``labels`` were built with (loading the target for ``--features unet``), to judge with.

    Raises:
        `ValueError`: labels built with ``--features unet`` and no ``pipeline``.
    """
    target = None
    if labels.extractor == UNET:
        if pipeline is None:
            raise ValueError("These labels were built with --features unet; pass the target pipeline (pipeline=).")
        target = AuditTarget.load(pipeline, what="pipeline")
    return load_feature_extractor(labels.extractor, unet=target and target.unet, scheduler=target and target.scheduler,
                                  device=device, codec=target and target.codec)


def target_agreement(
    generated: str | os.PathLike,
    labels_dir: str | os.PathLike,
    pipeline: str | None = None,
    quantile: float = IN_CLUSTER_QUANTILE,
    batch_size: int = 256,
    device: str | None = None,
    extractor=None,
) -> dict:
    """
    How often the labeller puts guided generations in the cluster they were steered to.

    Args:
        generated: a generation folder whose ``target`` column holds each image's surrogate label.
        labels_dir: the `side label` output the targets index (its centroids, extractor and labelled distances).
        pipeline (`str`, *optional*): the target pipeline, for labels built with ``--features unet`` (default: the
            one ``generation.json`` of ``generated`` records).
        quantile (`float`): the cluster radius (see [`cluster_radii`]).
        batch_size (`int`), device: embedding batch and device.
        extractor (*optional*): the labeller's extractor already loaded ([`labeller_extractor`]), so that judging
            several folders loads the target once.

    Returns:
        `dict`: ``num_generations``, ``hit_rate`` (nearest centroid = target) and ``in_cluster_rate`` (also within
        the radius); generations without a target (``-1``) count as misses.
    """
    labels = SurrogateLabels.load(labels_dir)
    radii = cluster_radii(labels_dir, labels.num_labels, quantile)
    dataset = load_image_dataset(generated)
    if "target" not in dataset.column_names or len(dataset) == 0:
        raise ValueError(f"{generated} holds no guided generations with a target column; pass a `side extract` folder.")
    if extractor is None:
        try:
            extractor = labeller_extractor(labels, pipeline or read_settings(generated).get("pipeline"), device)
        except ValueError as error:
            raise ValueError(f"{labels_dir}: {error}") from None
    assigned, distance = labels.assign(embed_images(extractor, dataset[find_image_column(dataset)], batch_size=batch_size))
    assigned, distance, targets = assigned.numpy(), distance.numpy(), np.asarray(dataset["target"])
    hit = (assigned == targets) & (targets >= 0)
    inside = hit & (distance <= radii[np.clip(targets, 0, labels.num_labels - 1)])
    return {"num_generations": len(dataset), "hit_rate": float(hit.mean()), "in_cluster_rate": float(inside.mean())}
