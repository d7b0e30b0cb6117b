"""Per-image seeds, drawn from one stream per role: synthesis and extraction never share a seed.

SIDE builds its surrogate conditions from a *synthetic* set and then *extracts* with guidance toward them. If both
drew their images from the same seeds, guided image ``i`` would start from the noise of synthetic image ``i`` (one of
the exemplars it is steered toward) and plain-sampling extraction would simply *be* the synthetic set. So every image
seed derives from ``(run seed, image index, stream)``, and the stream is the run's role:

- ``"synthesis"`` (``side synthesize``, method ``synthetic``): seeds with bit 62 clear;
- ``"extraction"`` (``side extract``, every other method): seeds with bit 62 set;
- ``"shared"``: the seeds of folders written before the streams existed (``image_seed`` of (run seed, index) for
  both roles). Such folders can be read, labelled and evaluated; they are not regenerated (`check_seed_stream`).

The two role streams are disjoint by construction (bit 62 differs), whatever run seeds a user passes; within a stream
the 62 remaining bits are numpy's `~numpy.random.SeedSequence` hash of (run seed, index, stream), so two run seeds
give unrelated images. The stream is recorded in ``generation.json`` (``seed_stream``).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

SYNTHESIS = "synthesis"
EXTRACTION = "extraction"
SHARED = "shared"
SEED_STREAMS = (SYNTHESIS, EXTRACTION)
# Non-zero codes: numpy's SeedSequence pads entropy with zeros, so a zero code would give the legacy stream's state.
STREAM_CODES = {SYNTHESIS: 1, EXTRACTION: 2}
ROLE_BIT = 62
SYNTHETIC_METHOD = "synthetic"


def stream_for_method(method: str) -> str:
    """The seed stream of a run of ``method``: ``"synthesis"`` for ``synthetic``, ``"extraction"`` otherwise."""
    return SYNTHESIS if method == SYNTHETIC_METHOD else EXTRACTION


def image_seed(run_seed: int, index: int, stream: str) -> int:
    """The seed of image ``index`` of a run: a 63-bit number derived from (run seed, index, stream).

    Args:
        run_seed (`int`): the run's ``--seed``.
        index (`int`): the image's index in the run.
        stream (`str`): ``"synthesis"``, ``"extraction"`` or ``"shared"`` (the formula of folders written before the
            streams existed, kept so their recorded seeds can be checked).

    Returns:
        `int`: the seed of the image's `torch.Generator` and of its target draw.

    Example:

    ```py
    >>> from diffusers_side.generation.seeds import image_seed
    >>> image_seed(0, 5, "synthesis") != image_seed(0, 5, "extraction")
    True
    ```
    """
    if stream == SHARED:
        state = np.random.SeedSequence([run_seed, index]).generate_state(2, dtype=np.uint32)
        return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)
    code = STREAM_CODES.get(stream)
    if code is None:
        raise ValueError(f"seed stream {stream!r} is not one of {SEED_STREAMS + (SHARED,)}.")
    state = np.random.SeedSequence([run_seed, index, code]).generate_state(2, dtype=np.uint32)
    value = ((int(state[0]) << 31) ^ int(state[1])) & (2**ROLE_BIT - 1)
    return value | ((code - 1) << ROLE_BIT)


def run_seeds(run_seed: int, num_images: int, stream: str) -> list[int]:
    """The seeds of images ``0 .. num_images - 1`` of a run."""
    return [image_seed(run_seed, index, stream) for index in range(num_images)]


def check_seed_stream(method: str, stream: str) -> None:
    """Refuse a run whose stream is not its role's (equal streams for synthesis and extraction).

    Raises:
        `ValueError`: naming the stream, the method and the fix.
    """
    expected = stream_for_method(method)
    if stream == expected:
        return
    if stream == SHARED:
        raise ValueError(
            f"seed_stream='shared' is the seed formula of folders written before synthesis and extraction had their own "
            f"seeds (it gives both roles the same image seeds); new runs are not generated with it. Drop seed_stream: "
            f"method={method!r} draws from the {expected!r} stream."
        )
    raise ValueError(
        f"seed_stream={stream!r} is not the stream of method={method!r} ({expected!r}): synthesis and extraction would "
        f"share image seeds. Drop seed_stream (it follows the method)."
    )


def check_disjoint_seeds(seeds: Iterable[int], other_seeds: Iterable[int], what: str, fix: str) -> None:
    """Refuse a run whose image seeds meet those of ``what`` (seeds < 0, unknown, are ignored).

    Raises:
        `ValueError`: how many seeds are shared, with ``what`` and ``fix`` in the message.
    """
    shared = set(int(s) for s in seeds) & set(int(s) for s in other_seeds if int(s) >= 0)
    if shared:
        raise ValueError(
            f"{len(shared)} image seed(s) of this run are also seeds of {what}: those generations would start from the "
            f"noise of the images that steer them. {fix}"
        )
