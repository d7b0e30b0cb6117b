"""Similarity names, their directions, and scoring every generation's best training match.

Three similarities score a generated image against the training (reference) set:

- ``"l2"``: the RMS L2 distance on ``[0, 1]`` pixels, ``l2(a, b) = sqrt(mean((a - b) ** 2))``.
  *Smaller is more similar.*
- ``"carlini"``: Carlini et al.'s normalized L2 (USENIX Security 2023),
  ``l2(x_hat, x) / (alpha * mean(l2(x_hat, y) for the n training y nearest to x_hat))`` with
  ``alpha = 0.5`` and ``n = 50``; ``n`` is capped at the reference size. *Smaller is more similar.*
- ``"cosine"``: the cosine similarity of L2-normalised feature embeddings (SSCD, DINOv2, CLIP, the
  UNet's own features; see `diffusers_side.labels.features`). *Larger is more similar.*

Each similarity is one file (``l2.py``, ``carlini.py``, ``cosine.py``) and one registration (``registry.py``); this
module re-exports the names the rest of the package imports.

A feature extractor is not a similarity: it is passed separately (see `diffusers_side.evaluation.evaluate.evaluate`)
and its embeddings are compared with ``"cosine"``.
"""

from __future__ import annotations

from .matches import CARLINI_ALPHA, CARLINI_NUM_NEIGHBORS, Matches, carlini_normalized_l2, rms_l2
from .nearest_match import COSINE, DEFAULT_CHUNK_SIZE
from .registry import (
    check_similarity,
    describe_similarity,
    direction_text,
    find_best_matches,
    get_similarity,
    pixel_similarity_names,
    similarity_names,
    smaller_is_more_similar,
)

__all__ = [
    "CARLINI_ALPHA", "CARLINI_NUM_NEIGHBORS", "COSINE", "DEFAULT_CHUNK_SIZE", "Matches", "carlini_normalized_l2",
    "check_similarity", "describe_similarity", "direction_text", "find_best_matches", "get_similarity",
    "pixel_similarity_names", "rms_l2", "similarity_names", "smaller_is_more_similar",
]
