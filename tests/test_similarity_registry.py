"""A similarity is one file + one registration: a toy one registered here runs through `side evaluate` end to end,
with its own direction, bands and description; the built-ins keep their numbers."""

import json

import numpy as np
import pytest

from diffusers_side.cli import main as side
from diffusers_side.similarity import registry
from diffusers_side.similarity.base import Similarity
from diffusers_side.similarity.matches import Matches
from diffusers_side.similarity.registry import find_best_matches, get_similarity, register_similarity, similarity_names


def match_l1(generated, reference, chunk_size, alpha, num_neighbors, device, show_progress) -> Matches:
    """Mean absolute pixel difference: best and second-best training image per generation."""
    distances = (generated.double()[:, None, :] - reference.double()[None, :, :]).abs().mean(dim=2).numpy()
    order = np.argsort(distances, axis=1, kind="stable")[:, :2]
    best, second = (np.take_along_axis(distances, order[:, i : i + 1], axis=1)[:, 0] for i in (0, 1))
    return Matches(order[:, 0], best, second, best, second)


L1 = Similarity(
    name="l1", description=lambda alpha, n, extractor: "mean absolute difference on [0, 1] pixels",
    smaller_is_more_similar=True, compares="pixels", default_bands=(("high", 0.0, 0.05), ("mid", 0.05, 0.1), ("low", 0.1, 0.2)),
    band_rationale="a toy similarity for this test", match=match_l1,
)


@pytest.fixture
def l1_registered(monkeypatch):
    monkeypatch.setattr(registry, "_SIMILARITIES", dict(registry._SIMILARITIES))
    register_similarity(L1)
    yield L1


def test_builtins_are_registered_once_and_a_name_is_never_taken_twice():
    assert similarity_names()[:3] == ("l2", "carlini", "cosine")
    with pytest.raises(ValueError, match="'carlini' is already registered"):
        register_similarity(get_similarity("carlini"))
    with pytest.raises(ValueError, match=r"similarity='carlni' is not one of \('l2', 'carlini', 'cosine'"):
        get_similarity("carlni")


def test_a_registered_similarity_scores_through_side_evaluate(l1_registered, tmp_path, capsys):
    rng = np.random.default_rng(0)
    reference = tmp_path / "reference"
    reference.mkdir()
    import PIL.Image

    images = rng.integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    for i, image in enumerate(images):
        PIL.Image.fromarray(image, mode="L").save(reference / f"{i}.png")
    generated = tmp_path / "generated"
    generated.mkdir()
    for i, image in enumerate(images[:3]):  # exact copies of training images 0-2
        PIL.Image.fromarray(image, mode="L").save(generated / f"{i}.png")
    output = tmp_path / "eval"
    assert side(["evaluate", "--generated", str(generated), "--reference", str(reference), "--similarity", "l1", "--output", str(output)]) == 0
    report = json.loads((output / "report.json").read_text())
    assert report["similarity"]["kind"] == "l1" and report["similarity"]["description"] == "mean absolute difference on [0, 1] pixels"
    assert report["bands_rationale"] == "a toy similarity for this test"
    (method,) = report["methods"].values()
    assert method["ams"]["high"] == 1.0, "three exact copies land in the most similar band"


def test_the_builtins_match_as_before():
    rng = np.random.default_rng(1)
    import torch

    generated, reference = torch.from_numpy(rng.random((5, 16))), torch.from_numpy(rng.random((7, 16)))
    l2 = find_best_matches(generated, reference, "l2", show_progress=False)
    direct = (generated[:, None] - reference[None]).pow(2).mean(dim=2).sqrt().numpy()
    assert np.array_equal(l2.best_index, direct.argmin(axis=1)) and np.allclose(l2.score, direct.min(axis=1))
    carlini = find_best_matches(generated, reference, "carlini", num_neighbors=4, show_progress=False)
    nearest = np.sort(direct, axis=1)[:, :4]
    assert np.allclose(carlini.score, nearest[:, 0] / (0.5 * nearest.mean(axis=1))) and carlini.num_neighbors == 4
