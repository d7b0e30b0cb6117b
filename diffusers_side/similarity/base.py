"""What a similarity is to the audit: how it scores a generation against the training set, which way is more
similar, its default bands and where they come from. One [`Similarity`] per file, registered in `registry.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .matches import Matches

# (generated, reference, chunk_size, alpha, num_neighbors, device, show_progress) -> Matches
MatchFn = Callable[[torch.Tensor, torch.Tensor, int, float, int, "str | torch.device | None", bool], Matches]


@dataclass(frozen=True)
class Similarity:
    """
    A similarity between a generated image and a training image, as the evaluation uses it.

    Args:
        name (`str`): what `--similarity` and ``evaluate(similarity=...)`` call it.
        description (`Callable`): ``(alpha, num_neighbors, extractor) -> str``, one line for reports.
        smaller_is_more_similar (`bool`): a distance (True) or a similarity (False).
        compares (`str`): ``"pixels"`` ([0, 1] pixels, flattened) or ``"embeddings"`` (L2-normalised features of a
            feature extractor).
        default_bands (`tuple`): ``(name, low, high)`` per band, sorted by their edges.
        band_rationale (`str`): where the default bands come from.
        match (`Callable`): scores every generation and keeps its best and second-best match ([`Matches`]).
        pair_metric (`str`): the metric of `diffusers_side.similarity.nearest_match.keys_in_bands` that scores every
            (generation, training image) pair on the same scale as ``match`` (``"l2"`` or ``"cosine"``), for UMS
            counted over all pairs.
        normalized (`bool`): pair scores are divided by the generation's ``Matches.normalizer`` (Carlini's), and
            ``alpha`` / ``num_neighbors`` are recorded in the report.

    Example:

    ```py
    >>> from diffusers_side.similarity.registry import get_similarity
    >>> get_similarity("carlini").smaller_is_more_similar
    True
    ```
    """

    name: str
    description: Callable[[float, int, str], str]
    smaller_is_more_similar: bool
    compares: str
    default_bands: tuple[tuple[str, float, float], ...]
    band_rationale: str
    match: MatchFn
    pair_metric: str = "l2"
    normalized: bool = False
