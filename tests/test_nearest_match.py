"""The chunked nearest-match search against a brute-force float64 search."""

import math

import pytest
import torch

from diffusers_side.similarity.nearest_match import nearest_neighbors


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
