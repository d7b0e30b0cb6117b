"""``"cosine"``: the cosine similarity of L2-normalised feature embeddings (SSCD, DINOv2, CLIP, the UNet's own
features; see `diffusers_side.labels.features`). Larger is more similar."""

from __future__ import annotations

import numpy as np
import torch

from .base import Similarity
from .matches import Matches
from .nearest_match import COSINE, nearest_neighbors


def check_normalised(embeddings: torch.Tensor, name: str) -> None:
    """Refuse embeddings that are not unit vectors (cosine similarity expects them)."""
    norms = embeddings.double().norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise ValueError(
            f"The {name} embeddings are not L2-normalised (norms {norms.min():.4g} to {norms.max():.4g}); "
            "cosine similarity expects unit vectors, as `features.embed_images` returns."
        )


def match_cosine(generated, reference, chunk_size, alpha, num_neighbors, device, show_progress) -> Matches:
    """Best and second-best match by cosine; Gu's ratio uses the embedding L2 ``sqrt(2 - 2 cos)``."""
    check_normalised(generated, "generated")
    check_normalised(reference, "reference")
    scores, indices = nearest_neighbors(generated, reference, 2, COSINE, chunk_size, device, show_progress)
    scores, indices = scores.numpy(), indices.numpy()
    distances = np.sqrt(np.clip(2.0 - 2.0 * scores, 0.0, None))
    return Matches(indices[:, 0], scores[:, 0], scores[:, 1], distances[:, 0], distances[:, 1])


COSINE_SIMILARITY = Similarity(
    name=COSINE,
    description=lambda alpha, num_neighbors, extractor: f"cosine similarity of L2-normalised `{extractor}` embeddings",
    smaller_is_more_similar=False,
    compares="embeddings",
    default_bands=(("low", 0.4, 0.5), ("mid", 0.5, 0.6), ("high", 0.6, 1.0)),
    band_rationale=(
        "Cosine of copy-detection embeddings (SIDE paper, Fig. 4): low < 0.5, mid 0.5-0.6, high > 0.6. "
        "The paper gives no lower edge for the low band; 0.4 is used because a low band without one would "
        "count every novel image, and 0.4 agrees with the paper's Table 1: on CelebA-25000 Carlini UnCond "
        "has AMS 5.00 + 0.10 + 0.00 = 5.10 % over the three bands and a 95th-percentile similarity of "
        "0.404, i.e. about 5 % of its generations lie above 0.4."
    ),
    match=match_cosine,
    pair_metric=COSINE,
)
