"""AMS / UMS, the percentile and Gu et al.'s ratio on hand-built cases with known answers."""


import numpy as np
import pytest
import torch

from diffusers_side.bands import default_bands
from diffusers_side.metrics import extraction_metrics, memorization_ratio, similarity_percentile
from diffusers_side.similarity import Matches, find_best_matches


def test_memorization_ratio_on_a_constructed_case():
    base = np.full(64, 0.5)
    reference = np.stack([base, base + 0.3, base - 0.3])
    # nearest / second: 0.05 / 0.25 = 0.2 (memorized), 0.1 / 0.2 = 0.5 (not), 0 / 0.3 (memorized)
    generated = np.stack([base + 0.05, base + 0.1, base - 0.3])
    matches = find_best_matches(torch.from_numpy(generated), torch.from_numpy(reference), "l2", show_progress=False)
    np.testing.assert_allclose(matches.nearest_distance, [0.05, 0.1, 0.0], atol=1e-12)
    np.testing.assert_allclose(matches.second_distance, [0.25, 0.2, 0.3], atol=1e-12)
    assert memorization_ratio(matches.nearest_distance, matches.second_distance) == pytest.approx(2 / 3)
    # The rule is strict: exactly 1/3 is not memorized.
    assert memorization_ratio(np.array([1.0, 0.9]), np.array([3.0, 3.0])) == 0.5


def test_ams_ums_on_exact_copies_near_copies_and_novel_images():
    rng = np.random.default_rng(4)
    reference = rng.uniform(0.1, 0.9, (10, 64))
    generated = np.stack(
        [
            reference[0],  # exact copies: distance 0 -> high [0, 0.02)
            reference[0],
            reference[1],
            reference[2] + 0.03,  # near copy: RMS exactly 0.03 -> mid [0.02, 0.04)
            reference[3] + 0.05,  # looser copy: RMS 0.05 -> low [0.04, 0.06]
            reference[3] - 0.05,
            rng.uniform(0, 1, 64),  # novel: far from everything
            rng.uniform(0, 1, 64),
        ]
    )
    bands = default_bands("l2")
    matches = find_best_matches(torch.from_numpy(generated), torch.from_numpy(reference), "l2", chunk_size=3, show_progress=False)
    assert matches.best_index[:6].tolist() == [0, 0, 1, 2, 3, 3]
    result = extraction_metrics(matches, bands, "l2")
    assert result["counts"] == {"high": 3, "mid": 1, "low": 2}
    assert result["unique_counts"] == {"high": 2, "mid": 1, "low": 1}
    assert result["ams"] == pytest.approx({"high": 3 / 8, "mid": 1 / 8, "low": 2 / 8})
    assert result["ums"] == pytest.approx({"high": 2 / 8, "mid": 1 / 8, "low": 1 / 8})
    assert result["memorization_ratio"] == pytest.approx(6 / 8)
    assert result["num_generations"] == 8


def test_percentile_follows_the_direction_of_similarity():
    distances = np.linspace(0, 1, 101)
    assert similarity_percentile(distances, "carlini") == pytest.approx(0.05)
    assert similarity_percentile(distances, "cosine") == pytest.approx(0.95)


def test_extraction_metrics_rejects_an_empty_group():
    empty = Matches(*(np.zeros(0) for _ in range(5)))
    with pytest.raises(ValueError, match="empty"):
        extraction_metrics(empty, default_bands("l2"), "l2")
