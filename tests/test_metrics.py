"""AMS / UMS, the percentile and Gu et al.'s ratio on hand-built cases with known answers."""


import numpy as np
import pytest
import torch

from diffusers_side.evaluation.bands import Band, assign_bands, default_bands
from diffusers_side.evaluation.metrics import (
    check_ums,
    extraction_metrics,
    memorization_ratio,
    similarity_percentile,
    training_images_in_bands,
)
from diffusers_side.similarity.measures import CARLINI_ALPHA, Matches, find_best_matches


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


def all_pair_scores(generated: np.ndarray, reference: np.ndarray, similarity: str) -> np.ndarray:
    """Every (generation, training image) score in float64, by brute force."""
    if similarity == "cosine":
        return generated @ reference.T
    distances = np.sqrt(((generated[:, None, :] - reference[None, :, :]) ** 2).mean(axis=2))
    if similarity == "l2":
        return distances
    nearest = np.sort(distances, axis=1)[:, : min(50, len(reference))]
    return distances / (CARLINI_ALPHA * nearest.mean(axis=1, keepdims=True))


def brute_force_pairs_ums(generated, reference, bands, similarity) -> dict:
    assigned = assign_bands(all_pair_scores(generated, reference, similarity), bands)
    return {band.name: int((assigned == position).any(axis=0).sum()) for position, band in enumerate(bands)}


def copies_and_neighbours(rng, similarity):
    """Training images in tight groups (near-duplicates), generations that copy, nearly copy or miss them."""
    centres = rng.uniform(0.2, 0.8, (6, 48))
    reference = np.concatenate([centres + rng.normal(0, 0.02, (6, 48)) for _ in range(5)])
    generated = np.concatenate([reference[:4], reference[4:12] + rng.normal(0, 0.03, (8, 48)), rng.uniform(0, 1, (4, 48))])
    if similarity == "cosine":
        reference = reference - 0.5
        generated = generated - 0.5
        reference /= np.linalg.norm(reference, axis=1, keepdims=True)
        generated /= np.linalg.norm(generated, axis=1, keepdims=True)
    return generated, reference


@pytest.mark.parametrize(
    "similarity, bands",
    [
        ("l2", default_bands("l2")),
        ("carlini", default_bands("carlini")),
        ("cosine", [Band("low", 0.5, 0.8), Band("mid", 0.8, 0.95), Band("high", 0.95, 1.0)]),
    ],
)
def test_ums_over_all_pairs_matches_brute_force_and_contains_best_matches(similarity, bands):
    generated, reference = copies_and_neighbours(np.random.default_rng(7), similarity)
    matches = find_best_matches(torch.from_numpy(generated), torch.from_numpy(reference), similarity, chunk_size=7,
                                show_progress=False)
    hits = training_images_in_bands(torch.from_numpy(generated), torch.from_numpy(reference), bands, similarity, matches,
                                    chunk_size=7)
    pairs = extraction_metrics(matches, bands, similarity, hits)
    best = extraction_metrics(matches, bands, similarity)
    assert pairs["unique_counts"] == brute_force_pairs_ums(generated, reference, bands, similarity)
    assert pairs["ams"] == best["ams"]
    assert all(pairs["unique_counts"][name] >= best["unique_counts"][name] for name in best["unique_counts"])
    assert sum(pairs["unique_counts"].values()) > sum(best["unique_counts"].values())  # near-duplicates count too


def test_ums_pairs_credits_the_near_duplicates_of_a_copied_image():
    """One exact copy of A, whose near-duplicate B (RMS 0.01) is in the high band too: best 1, pairs 2."""
    a = np.full(64, 0.5)
    reference = np.stack([a, a + 0.01, a + 0.3, a - 0.3])
    generated = torch.from_numpy(a[None])
    matches = find_best_matches(generated, torch.from_numpy(reference), "l2", show_progress=False)
    bands = default_bands("l2")
    hits = training_images_in_bands(generated, torch.from_numpy(reference), bands, "l2", matches)
    assert extraction_metrics(matches, bands, "l2")["unique_counts"]["high"] == 1
    assert extraction_metrics(matches, bands, "l2", hits)["unique_counts"] == {"high": 2, "mid": 0, "low": 0}
    assert extraction_metrics(matches, bands, "l2", hits)["ums"]["high"] == 2.0  # UMS can exceed AMS (1.0)


def test_unknown_ums_counting_is_refused():
    assert check_ums("pairs") == "pairs"
    with pytest.raises(ValueError, match=r"ums='all' is not one of \('best', 'pairs'\)"):
        check_ums("all")
