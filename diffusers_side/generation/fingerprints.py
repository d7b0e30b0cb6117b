"""Fingerprints of what a generation run depends on beyond its settings: configs, targets and the exemplar set.

The weights are fingerprinted by `diffusers_side.pipelines.loading.weights_fingerprint`. These cover the rest, so
that a run killed and resumed after ``scheduler_config.json`` was edited (another beta schedule, another
``prediction_type``, another sampler class), or after ``--exemplars`` was re-labelled, is refused instead of
yielding one set from two samplers.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch


def _plain_config(config) -> dict:
    """A config as JSON-ready values, without bookkeeping keys (``_name_or_path``, ``_diffusers_version``, ...)."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in values.items() if not k.startswith("_") and not k.endswith("_version")}


def config_fingerprint(pipe, include_classifier: bool) -> str:
    """The sha256 of the pipeline's config and of every sampling component's class and config.

    Args:
        pipe: a loaded `DiffusionPipeline` (its ``components``: UNet, scheduler, classifier, text encoder, ...).
        include_classifier (`bool`): whether the classifier samples (guided methods); an unguided run does not
            depend on it.

    Returns:
        `str`: 64 hex digits.
    """
    payload = {"pipeline": {"class": type(pipe).__name__, **_plain_config(pipe.config)}}
    for name, component in sorted(pipe.components.items()):
        if component is None or (name == "classifier" and not include_classifier):
            payload["pipeline"].pop(name, None)
            continue
        config = getattr(component, "config", None)
        payload[name] = {"class": type(component).__name__, **(_plain_config(config) if config is not None else {})}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def steering_fingerprint(steering) -> str | None:
    """The sha256 of what steers a guided run beyond the model: the target distribution (number of conditions and
    probabilities) and, for exemplar guidance, the exemplar images and labels; ``None`` for an unguided run.

    Args:
        steering (`diffusers_side.methods.base.Steering`, *optional*): from the method's ``steering``.
    """
    if steering is None:
        return None
    targets = steering.targets
    digest = hashlib.sha256(f"{targets.num_conditions};{type(steering.guide).__name__}".encode())
    if targets.probabilities is not None:
        digest.update(np.ascontiguousarray(targets.probabilities, dtype=np.float64).tobytes())
    exemplars = getattr(steering.guide, "exemplars", None)
    if exemplars is not None:
        digest.update(f"{tuple(exemplars.image_shape)}".encode())
        for tensor in (exemplars.images, exemplars.labels):
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
