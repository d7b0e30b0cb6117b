"""Similarity bands: edges, defaults, parsing and validation."""

import math

import numpy as np
import pytest

from diffusers_side.evaluation.bands import Band, assign_bands, default_bands, parse_bands, validate_bands
from diffusers_side.similarity.registry import similarity_names


def test_band_edges_are_half_open_and_the_last_band_is_closed():
    bands = default_bands("cosine")
    scores = np.array([0.39, 0.4, 0.5, 0.5999, 0.6, 1.0, 1.0001])
    assert assign_bands(scores, bands).tolist() == [-1, 0, 1, 1, 2, 2, -1]


def test_default_bands_are_valid_and_named_low_mid_high():
    for similarity in similarity_names():
        bands = default_bands(similarity)
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
