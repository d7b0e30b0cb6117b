"""Similarities on hand-built cases: RMS L2, normalized L2, cosine best matches, unknown names."""

import math

import numpy as np
import pytest
import torch

from diffusers_side.evaluation.bands import default_bands
from diffusers_side.evaluation.metrics import extraction_metrics, similarity_percentile
from diffusers_side.similarity.measures import carlini_normalized_l2, find_best_matches, rms_l2


def test_rms_l2_is_root_mean_square_of_pixel_differences():
    a = torch.zeros(2, 1, 2, 2)
    b = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]).view(2, 1, 2, 2)
    torch.testing.assert_close(rms_l2(a, b), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_carlini_normalized_l2_matches_a_direct_computation():
    rng = np.random.default_rng(3)
    reference, generated = rng.random((20, 12)), rng.random((6, 12))
    generated[0] = reference[7] + 0.01
    matches = find_best_matches(torch.from_numpy(generated), torch.from_numpy(reference), "carlini", chunk_size=4, num_neighbors=5, show_progress=False)
    for i, image in enumerate(generated):
        distances = np.sqrt(((reference - image) ** 2).mean(axis=1))
        order = np.argsort(distances)
        normalizer = 0.5 * distances[order[:5]].mean()
        assert matches.best_index[i] == order[0]
        # The normalizer averages float32 distances beyond the second neighbour: relative error ~1e-6.
        assert matches.score[i] == pytest.approx(distances[order[0]] / normalizer, rel=1e-6)
        assert matches.second_score[i] == pytest.approx(distances[order[1]] / normalizer, rel=1e-6)
        assert matches.nearest_distance[i] == pytest.approx(distances[order[0]], rel=1e-9)
        assert matches.second_distance[i] == pytest.approx(distances[order[1]], rel=1e-9)
    assert matches.best_index[0] == 7 and matches.score[0] < 1 / 3


def test_carlini_neighbours_are_capped_at_the_reference_size():
    reference, generated = torch.rand(4, 8), torch.rand(3, 8)
    matches = find_best_matches(generated, reference, "carlini", num_neighbors=50, show_progress=False)
    assert matches.num_neighbors == 4
    distances = torch.cdist(generated.double(), reference.double()) / math.sqrt(8)
    expected = distances.min(dim=1).values / (0.5 * distances.mean(dim=1))
    np.testing.assert_allclose(matches.score, expected.numpy(), rtol=1e-6)


def test_carlini_normalizer_of_exact_copies_is_defined():
    # All neighbours at distance 0: normalized distance 0 instead of 0 / 0.
    assert carlini_normalized_l2(np.array([0.0]), np.array([[0.0, 0.0]]))[0] == 0.0
    assert carlini_normalized_l2(np.array([0.1]), np.array([[0.1, 0.3]]), alpha=0.5)[0] == pytest.approx(0.1 / 0.1)


def test_cosine_bands_count_larger_as_more_similar():
    # Unit vectors at known cosines to basis vector e_i: 0.95 and 0.65 -> high, 0.55 -> mid, 0.45 -> low, 0.2 -> none.
    dim = 8
    reference = torch.eye(dim)[:4]
    cosines = [0.95, 0.65, 0.55, 0.45, 0.2]
    generated = torch.zeros(len(cosines), dim, dtype=torch.float64)
    for row, cosine in enumerate(cosines):
        generated[row, row % 4] = cosine
        generated[row, 7] = math.sqrt(1 - cosine**2)
    matches = find_best_matches(generated, reference, "cosine", show_progress=False)
    np.testing.assert_allclose(matches.score, cosines, atol=1e-12)
    result = extraction_metrics(matches, default_bands("cosine"), "cosine")
    assert result["counts"] == {"low": 1, "mid": 1, "high": 2}
    assert result["p95_similarity"] == pytest.approx(np.percentile(cosines, 95))
    np.testing.assert_allclose(matches.nearest_distance, np.sqrt(2 - 2 * np.array(cosines)), atol=1e-9)


def test_cosine_needs_normalised_embeddings():
    with pytest.raises(ValueError, match="not L2-normalised"):
        find_best_matches(torch.rand(3, 4) * 3, torch.eye(4), "cosine", show_progress=False)


@pytest.mark.parametrize("name", ["carlni", "L2", "unet", ""])
def test_unknown_similarity_is_an_error_naming_the_choices(name):
    message = rf"similarity={name!r} is not one of \('l2', 'carlini', 'cosine'\)"
    with pytest.raises(ValueError, match=message):
        find_best_matches(torch.rand(3, 4), torch.rand(4, 4), name, show_progress=False)
    with pytest.raises(ValueError, match=message):
        default_bands(name)
    with pytest.raises(ValueError, match=message):
        similarity_percentile(np.zeros(3), name)
