"""Hand-built cases with known answers: the search (nearest_match), normalized L2 (similarity), bands, AMS / UMS, Gu's ratio (metrics)."""

import math

import numpy as np
import pytest
import torch

from diffusers_side.bands import DEFAULT_BANDS, Band, assign_bands, default_bands, parse_bands, validate_bands
from diffusers_side.metrics import extraction_metrics, memorization_ratio, similarity_percentile
from diffusers_side.nearest_match import nearest_neighbors
from diffusers_side.similarity import Matches, carlini_normalized_l2, find_best_matches, rms_l2


def brute_force(queries: torch.Tensor, keys: torch.Tensor, k: int, metric: str):
    """The full N_q x N_k matrix in float64, sorted: what the chunked search must reproduce."""
    queries, keys = queries.double(), keys.double()
    if metric == "cosine":
        scores, indices = (queries @ keys.T).sort(dim=1, descending=True)
    else:
        scores, indices = (torch.cdist(queries, keys) / math.sqrt(queries.shape[1])).sort(dim=1)
    return scores[:, :k], indices[:, :k]


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 64, 211, 5000])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_chunked_search_equals_full_search(chunk_size, metric):
    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.rand(103, 37, generator=generator), torch.rand(211, 37, generator=generator)
    if metric == "cosine":
        queries, keys = torch.nn.functional.normalize(queries, dim=1), torch.nn.functional.normalize(keys, dim=1)
    scores, indices = nearest_neighbors(queries, keys, 5, metric, chunk_size=chunk_size, show_progress=False)
    expected_scores, expected_indices = brute_force(queries, keys, 5, metric)
    assert torch.equal(indices, expected_indices)
    # Best and second best are recomputed in float64; further neighbours keep float32 rounding.
    torch.testing.assert_close(scores[:, :2], expected_scores[:, :2], rtol=0, atol=1e-12)
    torch.testing.assert_close(scores[:, 2:], expected_scores[:, 2:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_search_leaves_its_inputs_unchanged(metric):
    generator = torch.Generator().manual_seed(3)
    queries = torch.nn.functional.normalize(torch.rand(20, 12, generator=generator), dim=1)
    keys = torch.nn.functional.normalize(torch.rand(30, 12, generator=generator), dim=1)
    queries_before, keys_before = queries.clone(), keys.clone()
    nearest_neighbors(queries, keys, 4, metric, chunk_size=8, show_progress=False)
    assert torch.equal(queries, queries_before) and torch.equal(keys, keys_before)


def test_uint8_rows_are_pixels_over_255():
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (40, 48), dtype=torch.uint8, generator=generator)
    queries = pixels[:9].clone()
    queries[:, :5] = 0
    scores, indices = nearest_neighbors(queries, pixels, 3, chunk_size=16, show_progress=False)
    expected_scores, expected_indices = brute_force(queries.double() / 255, pixels.double() / 255, 3, "l2")
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(scores[:, :2], expected_scores[:, :2], rtol=0, atol=1e-12)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-6)


def test_exact_copies_have_zero_distance_despite_float32_expansion():
    keys = torch.rand(30, 3 * 64 * 64, generator=torch.Generator().manual_seed(2))
    scores, indices = nearest_neighbors(keys[[4, 9]], keys, 2, chunk_size=8, show_progress=False)
    assert indices[:, 0].tolist() == [4, 9]
    assert scores[:, 0].tolist() == [0.0, 0.0]


def test_search_rejects_bad_input():
    keys = torch.rand(5, 4)
    with pytest.raises(ValueError, match="same number of columns"):
        nearest_neighbors(torch.rand(3, 5), keys, 1)
    with pytest.raises(ValueError, match="k=6"):
        nearest_neighbors(torch.rand(3, 4), keys, 6)
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_neighbors(torch.rand(3, 4), keys, 1, chunk_size=0)
    with pytest.raises(ValueError, match="Nothing to search"):
        nearest_neighbors(torch.rand(0, 4), keys, 1)


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


def test_band_edges_are_half_open_and_the_last_band_is_closed():
    bands = default_bands("cosine")
    scores = np.array([0.39, 0.4, 0.5, 0.5999, 0.6, 1.0, 1.0001])
    assert assign_bands(scores, bands).tolist() == [-1, 0, 1, 1, 2, 2, -1]


def test_percentile_follows_the_direction_of_similarity():
    distances = np.linspace(0, 1, 101)
    assert similarity_percentile(distances, "carlini") == pytest.approx(0.05)
    assert similarity_percentile(distances, "cosine") == pytest.approx(0.95)


def test_default_bands_are_valid_and_named_low_mid_high():
    for similarity, bands in DEFAULT_BANDS.items():
        assert validate_bands(bands) == list(bands)
        assert {band.name for band in bands} == {"low", "mid", "high"}


def test_parse_bands():
    assert parse_bands("low:0.4:0.5, mid:0.5:0.6,high:0.6:inf") == [Band("low", 0.4, 0.5), Band("mid", 0.5, 0.6), Band("high", 0.6, math.inf)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("mid:0.5:0.6,low:0.4:0.5", r"unsorted: 'low' \[0.4, 0.5\) comes after 'mid' \[0.5, 0.6\)"),
        ("low:0.4:0.55,mid:0.5:0.6", r"overlap: 'low' \[0.4, 0.55\) and 'mid' \[0.5, 0.6\)"),
        ("low:0.5:0.4", "'low'.*empty or malformed"),
        ("low:0.4", "name:low:high"),
        ("low:a:0.5", "not a number"),
        ("x:0:1,x:1:2", "distinct"),
    ],
)
def test_bad_bands_raise_with_their_names(text, message):
    with pytest.raises(ValueError, match=message):
        parse_bands(text)


def test_extraction_metrics_rejects_an_empty_group():
    empty = Matches(*(np.zeros(0) for _ in range(5)))
    with pytest.raises(ValueError, match="empty"):
        extraction_metrics(empty, default_bands("l2"), "l2")


@pytest.mark.parametrize("name", ["carlni", "L2", "unet", ""])
def test_unknown_similarity_is_an_error_naming_the_choices(name):
    message = rf"similarity={name!r} is not one of \('l2', 'carlini', 'cosine'\)"
    with pytest.raises(ValueError, match=message):
        find_best_matches(torch.rand(3, 4), torch.rand(4, 4), name, show_progress=False)
    with pytest.raises(ValueError, match=message):
        default_bands(name)
    with pytest.raises(ValueError, match=message):
        similarity_percentile(np.zeros(3), name)
