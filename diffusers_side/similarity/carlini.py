"""``"carlini"``: Carlini et al.'s normalized L2 (USENIX Security 2023),
``l2(x_hat, x) / (alpha * mean(l2(x_hat, y) for the n training y nearest to x_hat))``, ``alpha = 0.5``, ``n = 50``
(capped at the reference size). Smaller is more similar."""

from __future__ import annotations

from diffusers.utils import logging

from .base import Similarity
from .matches import Matches, carlini_normalized_l2
from .nearest_match import nearest_neighbors

logger = logging.get_logger(__name__)


def match_carlini(generated, reference, chunk_size, alpha, num_neighbors, device, show_progress) -> Matches:
    """Best and second-best match by normalized L2; ``Matches.normalizer`` keeps each generation's scale."""
    if alpha <= 0 or num_neighbors < 2:
        raise ValueError(f"Carlini's normalizer needs alpha > 0 and num_neighbors >= 2; got {alpha} and {num_neighbors}.")
    used = min(num_neighbors, len(reference))
    if used < num_neighbors:
        logger.warning(f"The reference has {len(reference)} images: Carlini's normalizer averages {used} neighbours, not {num_neighbors}.")
    distances, indices = nearest_neighbors(generated, reference, used, "l2", chunk_size, device, show_progress)
    distances, indices = distances.numpy(), indices.numpy()
    normalized = carlini_normalized_l2(distances[:, :2], distances, alpha)
    normalizer = alpha * distances.mean(axis=1)
    return Matches(indices[:, 0], normalized[:, 0], normalized[:, 1], distances[:, 0], distances[:, 1], used, normalizer)


CARLINI = Similarity(
    name="carlini",
    description=lambda alpha, num_neighbors, extractor: (
        f"Carlini et al.'s normalized L2 on [0, 1] pixels, alpha={alpha:g}, n={num_neighbors} nearest"
    ),
    smaller_is_more_similar=True,
    compares="pixels",
    default_bands=(("high", 0.0, 1.0 / 3.0), ("mid", 1.0 / 3.0, 0.5), ("low", 0.5, 2.0 / 3.0)),
    band_rationale=(
        "Normalized L2 (smaller is more similar); the paper publishes no edges. They are derived from "
        "Gu et al.'s rule (memorized when nearest < 1/3 of the second nearest). The normalizer is "
        "0.5 x the mean distance to the 50 nearest training images, and that mean is at least about the "
        "second-nearest distance d2, so normalized L2 <= 2 x d1 / d2: a generation Gu's rule flags "
        "(d1/d2 < 1/3) has normalized L2 below about 2/3. Edges 2/3, 1/2, 1/3 are Gu's ratio 1/3, 1/4, "
        "1/6 mapped the same way: low [1/2, 2/3], mid [1/3, 1/2), high [0, 1/3)."
    ),
    match=match_carlini,
    normalized=True,
)
