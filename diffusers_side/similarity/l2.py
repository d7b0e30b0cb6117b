"""``"l2"``: the RMS L2 distance on [0, 1] pixels, ``sqrt(mean((a - b) ** 2))``. Smaller is more similar."""

from __future__ import annotations

from .base import Similarity
from .matches import Matches
from .nearest_match import nearest_neighbors


def match_l2(generated, reference, chunk_size, alpha, num_neighbors, device, show_progress) -> Matches:
    """Best and second-best match by RMS L2 (``alpha`` and ``num_neighbors`` are not used)."""
    scores, indices = nearest_neighbors(generated, reference, 2, "l2", chunk_size, device, show_progress)
    scores, indices = scores.numpy(), indices.numpy()
    return Matches(indices[:, 0], scores[:, 0], scores[:, 1], scores[:, 0], scores[:, 1])


L2 = Similarity(
    name="l2",
    description=lambda alpha, num_neighbors, extractor: "RMS L2 distance on [0, 1] pixels",
    smaller_is_more_similar=True,
    compares="pixels",
    default_bands=(("high", 0.0, 0.02), ("mid", 0.02, 0.04), ("low", 0.04, 0.06)),
    band_rationale=(
        "RMS L2 on [0, 1] pixels (smaller is more similar); the paper publishes no edges. Equal steps of "
        "0.02 (about 5 grey levels of RMS error on 8-bit images): high [0, 0.02) is within re-encoding "
        "and resampling noise, mid [0.02, 0.04), low [0.04, 0.06]. The loosest edge stays below the "
        "distance at which distinct training images start to match each other (on the embedded digits "
        "the nearest other training image is >= 0.068 for 99 % of them). Absolute pixel distances depend "
        "on the data; prefer 'carlini', which normalizes by the local density."
    ),
    match=match_l2,
)
