"""Shared image loading: every source `load_image_dataset` accepts, and its errors."""

import numpy as np
import PIL.Image
import pytest
from datasets import Dataset, Features, Image, Value

from diffusers_side.storage.data import find_image_column, images_to_tensor, load_image_dataset, tensor_to_pil

FEATURES = Features({"image": Image(), "seed": Value("int64")})


def gray(value, size=8):
    return PIL.Image.fromarray(np.full((size, size), value, dtype=np.uint8), mode="L")


def test_sources_load_the_same_images(tmp_path):
    dataset = Dataset.from_dict({"image": [gray(10), gray(200)], "seed": [1, 2]}, features=FEATURES)
    dataset.save_to_disk(tmp_path / "saved")
    (tmp_path / "shards" / "shards").mkdir(parents=True)
    dataset.to_parquet(str(tmp_path / "shards" / "shards" / "shard-00000.parquet"))
    (tmp_path / "folder").mkdir()
    for i, image in enumerate(dataset["image"]):
        image.save(tmp_path / "folder" / f"{i}.png")
    for source in ("saved", "shards", "folder"):
        loaded = load_image_dataset(tmp_path / source)
        pixels = images_to_tensor(list(loaded[find_image_column(loaded)]))
        assert pixels.shape == (2, 1, 8, 8)
        assert sorted(pixels.mean(dim=(1, 2, 3)).mul(255).round().tolist()) == [10, 200]


def test_empty_sets_are_refused_clearly(tmp_path):
    empty = Dataset.from_dict({"image": [], "seed": []}, features=FEATURES)
    empty.save_to_disk(tmp_path / "saved")
    (tmp_path / "run" / "shards").mkdir(parents=True)
    empty.to_parquet(str(tmp_path / "run" / "shards" / "shard-00000.parquet"))
    for source in ("saved", "run"):
        with pytest.raises(ValueError, match="is empty; it holds no images"):
            load_image_dataset(tmp_path / source)


def test_missing_path_and_missing_image_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"has no image column; it has columns \['text', 'label'\]"):
        find_image_column(Dataset.from_dict({"text": ["a"], "label": [0]}))


def test_mixed_sizes_need_a_resolution():
    with pytest.raises(ValueError, match=r"mixed sizes .*--resolution 8"):
        images_to_tensor([gray(0, 8), gray(0, 16)])
    assert images_to_tensor([gray(0, 8), gray(255, 16)], resolution=8).shape == (2, 1, 8, 8)


def test_tensor_pil_round_trip():
    images = [gray(0), gray(128), gray(255)]
    assert [np.asarray(i).tolist() for i in tensor_to_pil(images_to_tensor(images))] == [np.asarray(i).tolist() for i in images]
