"""`diffusers_side.labels.agreement`: the labeller, not the steering classifier, judges whether a generation landed
in its target cluster (the blind sweep's collapse guard)."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import write_generation_dir
from diffusers_side.labels import surrogate_labels
from diffusers_side.labels.agreement import cluster_radii, target_agreement
from diffusers_side.labels.features import PixelFeatureExtractor, embed_images
from diffusers_side.storage.data import load_saved_dataset
from diffusers_side.storage.generation_folder import RECORD_FEATURES


def _image(level: int, seed: int) -> Image.Image:
    pixels = np.full((16, 16), level, dtype=np.float64) + np.random.default_rng(seed).normal(0, 6, (16, 16))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture
def labels_dir(tmp_path):
    gradient = lambda level, seed: Image.fromarray(  # noqa: E731
        np.clip(np.add.outer(np.arange(16), np.arange(16)) * level / 30 + np.random.default_rng(seed).normal(0, 4, (16, 16)), 0, 255).astype(np.uint8))
    images = [gradient(level, seed) for level in (60, 240) for seed in range(5)] + [_image(128, seed) for seed in range(5)]
    synthetic = write_generation_dir(tmp_path / "synthetic", images)
    surrogate_labels.label_synthetic(synthetic, tmp_path / "labels", num_clusters=3, cohesion=-1, features="pixels")
    return tmp_path / "labels"


def _guided(tmp_path, images, targets):
    folder = write_generation_dir(tmp_path / "guided", images, method="side", guidance_scale=5.0, pipeline="default")
    from datasets import Dataset

    table = Dataset.from_parquet(str(folder / "shards" / "shard-00000.parquet")).to_dict()
    table["target"] = list(targets)
    Dataset.from_dict(table, features=RECORD_FEATURES).to_parquet(str(folder / "shards" / "shard-00000.parquet"))
    return folder


def test_hit_needs_the_target_and_in_cluster_needs_the_radius_too(tmp_path, labels_dir):
    labels = surrogate_labels.SurrogateLabels.load(labels_dir)
    members = load_saved_dataset(labels_dir)
    label, distance = np.asarray(members["label"]), np.asarray(members["distance"])
    own = int(label[-1])  # the label of the flat grey images
    other = (own + 1) % labels.num_labels
    closest = [int(i) for i in np.argsort(np.where(label == own, distance, np.inf))[:2]]
    noisy = [Image.fromarray(np.clip(np.asarray(members[i]["image"], dtype=np.float64)
                                     + np.random.default_rng(i).normal(0, 60, (16, 16)), 0, 255).astype(np.uint8)) for i in closest]
    images = [members[i]["image"] for i in closest] + [members[closest[0]]["image"]] + noisy
    targets = [own, own, other, own, own]
    folder = _guided(tmp_path, images, targets)
    assigned, distances = labels.assign(embed_images(PixelFeatureExtractor(), images))
    radii = cluster_radii(labels_dir, labels.num_labels)
    hit = assigned.numpy() == np.asarray(targets)
    inside = hit & (distances.numpy() <= radii[np.asarray(targets)])
    assert inside[:2].all() and not hit[2] and (hit & ~inside)[3:].any()  # copies in, wrong target out, noise outside
    result = target_agreement(folder, labels_dir)
    assert result == {"num_generations": 5, "hit_rate": pytest.approx(hit.mean()), "in_cluster_rate": pytest.approx(inside.mean())}


def test_radius_is_the_quantile_of_the_members_distances(labels_dir):
    members = load_saved_dataset(labels_dir)
    label, distance = np.asarray(members["label"]), np.asarray(members["distance"])
    radii = cluster_radii(labels_dir, int(label.max()) + 1, quantile=0.5)
    assert radii.tolist() == pytest.approx([np.quantile(distance[label == j], 0.5) for j in range(int(label.max()) + 1)])
    with pytest.raises(ValueError, match="quantile=0 must lie in"):
        cluster_radii(labels_dir, 3, quantile=0)


def test_unguided_folders_and_unet_labels_without_pipeline_are_named(tmp_path, labels_dir):
    plain = tmp_path / "plain"
    plain.mkdir()
    Image.new("L", (16, 16)).save(plain / "a.png")
    with pytest.raises(ValueError, match="holds no guided generations with a target column"):
        target_agreement(plain, labels_dir)
    record = json.loads((labels_dir / "surrogate_labels.json").read_text())
    (labels_dir / "surrogate_labels.json").write_text(json.dumps({**record, "extractor": "unet"}))
    folder = write_generation_dir(tmp_path / "guided", [Image.new("L", (16, 16))] * 3, method="side", guidance_scale=1.0)
    with pytest.raises(ValueError, match="built with --features unet; pass the target pipeline"):
        target_agreement(folder, labels_dir)
