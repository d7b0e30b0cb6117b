"""The similarities the evaluation knows, by name: a new one is one file defining a [`Similarity`] and one
`register_similarity` call (below for the built-ins, or in the user's own code).

Example:

```py
>>> from diffusers_side.similarity.registry import similarity_names
>>> similarity_names()
('l2', 'carlini', 'cosine')
```
"""

from __future__ import annotations

import torch

from .base import Similarity
from .carlini import CARLINI
from .cosine import COSINE_SIMILARITY
from .l2 import L2
from .matches import CARLINI_ALPHA, CARLINI_NUM_NEIGHBORS, Matches
from .nearest_match import DEFAULT_CHUNK_SIZE

_SIMILARITIES: dict[str, Similarity] = {}


def register_similarity(similarity: Similarity) -> Similarity:
    """Make ``similarity`` available by its name to `evaluate`, `side evaluate --similarity` and the bands.

    Raises:
        `ValueError`: the name is taken, or its default bands are empty.
    """
    if similarity.name in _SIMILARITIES:
        raise ValueError(f"a similarity named {similarity.name!r} is already registered.")
    if similarity.compares not in ("pixels", "embeddings") or not similarity.default_bands:
        raise ValueError(f"similarity {similarity.name!r}: compares must be 'pixels' or 'embeddings' and default_bands non-empty.")
    _SIMILARITIES[similarity.name] = similarity
    return similarity


for _builtin in (L2, CARLINI, COSINE_SIMILARITY):
    register_similarity(_builtin)


def similarity_names() -> tuple[str, ...]:
    """Every registered similarity, in registration order."""
    return tuple(_SIMILARITIES)


def pixel_similarity_names() -> tuple[str, ...]:
    """The similarities that compare pixels (the others compare a feature extractor's embeddings)."""
    return tuple(name for name, similarity in _SIMILARITIES.items() if similarity.compares == "pixels")


def get_similarity(name: str) -> Similarity:
    """The registered similarity called ``name``.

    Raises:
        `ValueError`: any other value (the message names it and the choices), so that a typo never falls back to
            another similarity.
    """
    if name not in _SIMILARITIES:
        raise ValueError(
            f"similarity={name!r} is not one of {similarity_names()}; a feature extractor (unet, pixels, a model) "
            "is passed as feature_extractor= and compared with 'cosine'."
        )
    return _SIMILARITIES[name]


def check_similarity(similarity: str) -> str:
    """Return ``similarity`` if it is registered (else the `ValueError` of [`get_similarity`])."""
    return get_similarity(similarity).name


def smaller_is_more_similar(similarity: str) -> bool:
    """True for distances (``"l2"``, ``"carlini"``), False for similarities (``"cosine"``)."""
    return get_similarity(similarity).smaller_is_more_similar


def direction_text(similarity: str) -> str:
    """A short sentence saying which way the similarity points, for reports."""
    return "smaller is more similar" if smaller_is_more_similar(similarity) else "larger is more similar"


def describe_similarity(similarity: str, name: str, alpha: float = CARLINI_ALPHA, num_neighbors: int = 0) -> str:
    """One line for reports: what ``similarity`` measures (``name``: the feature extractor for embeddings)."""
    return get_similarity(similarity).description(alpha, num_neighbors, name)


def find_best_matches(
    generated: torch.Tensor,
    reference: torch.Tensor,
    similarity: str = "carlini",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    alpha: float = CARLINI_ALPHA,
    num_neighbors: int = CARLINI_NUM_NEIGHBORS,
    device: str | torch.device | None = None,
    show_progress: bool = True,
) -> Matches:
    """Score every generation against the reference set and keep its best and second-best match.

    Args:
        generated (`torch.Tensor`): ``(N_G, D)`` flattened pixels in ``[0, 1]`` (float or uint8) for a pixel
            similarity; L2-normalised embeddings for ``"cosine"``.
        reference (`torch.Tensor`): ``(N_train, D)``, same conventions; at least 2 rows.
        similarity (`str`): a registered similarity (`similarity_names`).
        chunk_size (`int`): see `diffusers_side.similarity.nearest_match.nearest_neighbors`.
        alpha (`float`), num_neighbors (`int`): Carlini's normalizer; ``num_neighbors`` is capped at
            the reference size (the number used is stored in the result).
        device: where to compute.
        show_progress (`bool`): show a progress bar.

    Returns:
        [`Matches`].
    """
    chosen = get_similarity(similarity)
    if len(reference) < 2:
        raise ValueError(f"The reference set has {len(reference)} image(s); at least 2 are needed for the second-best match.")
    return chosen.match(generated, reference, chunk_size, alpha, num_neighbors, device, show_progress)
