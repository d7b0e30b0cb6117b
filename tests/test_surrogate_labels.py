"""Surrogate labels: KMeans on centred features, cohesion filter, relabelling, sidecar and `side label`."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Features, Image, load_from_disk
from diffusers import DDPMScheduler
from sklearn.metrics import adjusted_rand_score
from test_features import BrokenExtractor, smooth_images

from conftest import make_tiny_unet, write_generation_dir
from diffusers_side import SIDEPipeline
from diffusers_side.cli import main
from diffusers_side.labels import surrogate_labels
from diffusers_side.labels.surrogate_labels import (
    CONTACT_SHEET,
    SurrogateLabels,
    fit_surrogate_labels,
    format_label_table,
    label_synthetic,
    otsu_threshold,
)
from diffusers_side.storage.data import tensor_to_pil

GROUP_SIZES = (30, 25, 20, 15)
DIFFUSE_SIZE = 20


def grouped_features(seed: int = 0, dim: int = 64, outlier: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Four tight groups and one diffuse group (truth -1), all sharing a large positive component.

    The shared component makes every uncentred cosine high, as with real extractor features. With
    ``outlier`` the diffuse group is replaced by a single far-away point (truth -2).
    """
    generator = torch.Generator().manual_seed(seed)
    common = 6 * torch.rand(dim, generator=generator)
    centres = torch.randn(len(GROUP_SIZES), dim, generator=generator)
    parts = [centres[g] + 0.1 * torch.randn(n, dim, generator=generator) for g, n in enumerate(GROUP_SIZES)]
    truth = [np.full(n, g) for g, n in enumerate(GROUP_SIZES)]
    if outlier:
        parts.append(-20 * centres[:1])
        truth.append(np.full(1, -2))
    else:
        parts.append(torch.randn(DIFFUSE_SIZE, dim, generator=generator))
        truth.append(np.full(DIFFUSE_SIZE, -1))
    features = torch.nn.functional.normalize(torch.cat(parts) + common, dim=1)
    return features, np.concatenate(truth)


def test_grouped_features_are_the_hard_case_for_uncentred_cosine():
    features, _ = grouped_features()
    assert (features @ features.T).min() > 0.8


@pytest.mark.parametrize("cohesion", [0.5, "auto"])
def test_labeler_recovers_tight_groups_and_drops_the_diffuse_one(cohesion):
    features, truth = grouped_features()
    labels = fit_surrogate_labels(features, num_clusters=5, cohesion=cohesion, seed=0, extractor="test")
    assert labels.num_labels == 4
    dropped = (set(range(5)) - set(labels.kept_cluster_ids)).pop()
    assert labels.cluster_sizes[dropped] == DIFFUSE_SIZE
    assert labels.cohesion[dropped] < labels.resolved_cohesion_threshold <= min(labels.cohesion[k] for k in labels.kept_cluster_ids)
    assigned, distances = labels.assign(features)
    tight = truth >= 0
    assert adjusted_rand_score(truth[tight], assigned[tight].numpy()) >= 0.9
    assert sum(labels.label_counts) == len(features)
    assert ((distances >= 0) & (distances <= 2)).all()
    assert labels.cohesion_threshold == cohesion


def test_labeler_is_seeded():
    features, _ = grouped_features()
    first = fit_surrogate_labels(features, num_clusters=8, cohesion=0.0, seed=3)
    second = fit_surrogate_labels(features, num_clusters=8, cohesion=0.0, seed=3)
    assert first.cohesion == second.cohesion and first.kept_cluster_ids == second.kept_cluster_ids
    torch.testing.assert_close(first.centroids, second.centroids)


def test_singleton_clusters_are_kept_only_when_allowed():
    features, _ = grouped_features(outlier=True)
    default = fit_surrogate_labels(features, num_clusters=5, cohesion=0.5)
    singleton = default.cluster_sizes.index(1)
    assert default.cohesion[singleton] == pytest.approx(1.0)
    assert singleton not in default.kept_cluster_ids
    assert default.num_labels == 4
    allowed = fit_surrogate_labels(features, num_clusters=5, cohesion=0.5, min_cluster_size=1)
    assert singleton in allowed.kept_cluster_ids


def test_otsu_threshold_splits_tight_from_diffuse():
    assert 0.3 < otsu_threshold([0.1, 0.2, 0.15, 0.25, 0.8, 0.9, 0.85]) < 0.8
    # the lone top value may not stand alone above the threshold
    threshold = otsu_threshold([0.1, 0.2, 0.3, 0.95])
    assert sum(v >= threshold for v in [0.1, 0.2, 0.3, 0.95]) >= 2
    assert otsu_threshold([0.4, 0.4, 0.4]) == pytest.approx(0.4)


def test_bad_settings_raise_before_clustering():
    features, _ = grouped_features()
    with pytest.raises(ValueError, match="more than the 110 synthetic images"):
        fit_surrogate_labels(features, num_clusters=111)
    with pytest.raises(ValueError, match="integer >= 2"):
        fit_surrogate_labels(features, num_clusters=1)
    for cohesion in (1.5, "tight"):
        with pytest.raises(ValueError, match="'auto' or a cosine value"):
            fit_surrogate_labels(features, num_clusters=5, cohesion=cohesion)
    with pytest.raises(ValueError, match="min-cluster-size"):
        fit_surrogate_labels(features, num_clusters=5, min_cluster_size=0)
    with pytest.raises(ValueError, match="finite"):
        fit_surrogate_labels(torch.full((10, 3), float("nan")), num_clusters=2)


def test_too_few_kept_clusters_lists_the_cohesion_values():
    features, _ = grouped_features()
    with pytest.raises(ValueError, match="Lower --cohesion") as error:
        fit_surrogate_labels(features, num_clusters=5, cohesion=1.0)
    message = str(error.value)
    assert "at least 2 surrogate labels" in message
    assert len([part for part in message.split("(n=") if part]) - 1 == 5


def test_sidecar_round_trip_and_label_info(tmp_path):
    features, _ = grouped_features()
    labels = fit_surrogate_labels(features, num_clusters=5, cohesion="auto", extractor="pixels")
    labels.save(tmp_path)
    loaded = SurrogateLabels.load(tmp_path)
    torch.testing.assert_close(loaded.centroids, labels.centroids)
    torch.testing.assert_close(loaded.feature_mean, labels.feature_mean)
    assert loaded.to_label_info() == labels.to_label_info()
    assert torch.equal(loaded.assign(features)[0], labels.assign(features)[0])
    info = json.loads(json.dumps(labels.to_label_info()))
    assert info["num_labels"] == 4 and info["extractor"] == "pixels" and info["cohesion_threshold"] == "auto"
    assert info["num_clusters"] == 5 and info["num_synthetic"] == len(features)
    assert len(info["kept_cohesion"]) == 4 and all(c >= info["resolved_cohesion_threshold"] for c in info["kept_cohesion"])
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(FileNotFoundError, match="side label"):
        SurrogateLabels.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="do not match"):
        labels.assign(features[:, :5])


def test_label_table_reports_kept_and_dropped():
    labels = fit_surrogate_labels(grouped_features()[0], num_clusters=5, cohesion=0.5, extractor="pixels")
    table = format_label_table(labels)
    kept_row = next(line for line in table.splitlines() if line.startswith("kept"))
    dropped_row = next(line for line in table.splitlines() if line.startswith("dropped"))
    assert kept_row.split()[1:3] == ["4", str(sum(GROUP_SIZES))]
    assert dropped_row.split()[1:3] == ["1", str(DIFFUSE_SIZE)]
    assert "tau = 0.500" in table


# End to end, from a generation directory written the way `side synthesize` writes it.

PROTOTYPES, COPIES, DIFFUSE_IMAGES = 3, 12, 12
@pytest.fixture(scope="module")
def generation_dir(tmp_path_factory):
    """Near-copies of 3 prototype images (the memorized modes) plus 12 unrelated images."""
    root = tmp_path_factory.mktemp("e2e")
    SIDEPipeline(make_tiny_unet(), DDPMScheduler(num_train_timesteps=1000)).save_pretrained(root / "pipeline")
    generator = torch.Generator().manual_seed(3)
    prototypes = smooth_images(PROTOTYPES, seed=5)
    copies = [(p + 0.03 * torch.randn(COPIES, 1, 16, 16, generator=generator)).clamp(0, 1) for p in prototypes]
    images = tensor_to_pil(torch.cat(copies + [smooth_images(DIFFUSE_IMAGES, seed=9)]))
    write_generation_dir(root / "synthetic", images, pipeline=str(root / "pipeline"), first_seed=1000)
    return root / "synthetic"


def test_label_synthetic_end_to_end_with_unet_features(generation_dir, tmp_path):
    output = tmp_path / "labels"
    dataset, labels = label_synthetic(generation_dir, output, num_clusters=4, cohesion="auto", seed=0, batch_size=16)
    assert labels.extractor == "unet" and labels.num_synthetic == len(dataset) == PROTOTYPES * COPIES + DIFFUSE_IMAGES
    assert labels.num_labels >= 2
    truth = np.repeat(np.arange(PROTOTYPES), COPIES)
    assert adjusted_rand_score(truth, np.asarray(dataset["label"][: len(truth)])) >= 0.9

    reloaded = load_from_disk(str(output))
    assert reloaded.column_names == ["image", "label", "distance", "seed"]
    assert reloaded.features["label"].dtype == "int64" and reloaded.features["distance"].dtype == "float32"
    assert reloaded.features["seed"].dtype == "int64"
    assert reloaded["seed"][:] == [1000 + i for i in range(len(reloaded))]
    assert set(reloaded["label"][:]) == set(range(labels.num_labels))
    assert reloaded[0]["image"].size == (16, 16)
    assert SurrogateLabels.load(output).to_label_info() == labels.to_label_info()

    with PIL.Image.open(output / CONTACT_SHEET) as sheet:
        assert sheet.format == "PNG" and sheet.height == labels.num_labels * (64 + surrogate_labels.CONTACT_SHEET_GAP)


def test_label_synthetic_replaces_an_earlier_label_output(generation_dir, tmp_path):
    output = tmp_path / "labels"
    label_synthetic(generation_dir, output, num_clusters=4, cohesion=0.5, features="pixels")
    dataset, labels = label_synthetic(generation_dir, output, num_clusters=5, cohesion=0.5, features="pixels")
    assert SurrogateLabels.load(output).num_clusters == 5 and labels.extractor == "pixels"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]


@pytest.fixture
def no_embedding(monkeypatch):
    """Fail the test if the expensive embedding starts."""

    def fail(*args, **kwargs):
        raise AssertionError("embedding started before the input was validated")

    monkeypatch.setattr(surrogate_labels, "embed_images", fail)


def test_label_synthetic_rejects_bad_output_dirs(generation_dir, tmp_path, no_embedding):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier `side label` output"):
        label_synthetic(generation_dir, occupied, num_clusters=4, features="pixels")
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="synthetic set itself"):
        label_synthetic(generation_dir, generation_dir, num_clusters=4, features="pixels")


def test_label_synthetic_rejects_bad_input_before_embedding(generation_dir, tmp_path, no_embedding):
    with pytest.raises(ValueError, match="more than the 48 synthetic images"):
        label_synthetic(generation_dir, tmp_path / "out", num_clusters=49, features="pixels")

    mixed = tmp_path / "mixed"
    images = tensor_to_pil(smooth_images(3)) + tensor_to_pil(smooth_images(1, size=8))
    write_generation_dir(mixed, images)
    with pytest.raises(ValueError, match="mixed sizes"):
        label_synthetic(mixed, tmp_path / "out", num_clusters=2, features="pixels")

    saved = tmp_path / "saved"
    Dataset.from_dict({"image": tensor_to_pil(smooth_images(4))}, features=Features({"image": Image()})).save_to_disk(str(saved))
    with pytest.raises(ValueError, match="pass --pipeline"):
        label_synthetic(saved, tmp_path / "out", num_clusters=2)
    assert not (tmp_path / "out").exists()


def test_label_synthetic_takes_an_explicit_pipeline_for_other_sources(generation_dir, tmp_path):
    saved = tmp_path / "saved"
    source = Dataset.from_parquet(str(generation_dir / "shards" / "shard-00000.parquet"))
    source.save_to_disk(str(saved))
    pipeline = str(generation_dir.parent / "pipeline")
    dataset, labels = label_synthetic(saved, tmp_path / "out", num_clusters=4, cohesion=0.5, pipeline=pipeline)
    assert labels.extractor == "unet" and len(dataset) == PROTOTYPES * COPIES + DIFFUSE_IMAGES


@pytest.mark.parametrize("mode, message", [("nan", "NaN or infinite"), ("short", "3 feature vectors for a batch of 4")])
def test_label_synthetic_rejects_a_broken_extractor(generation_dir, tmp_path, monkeypatch, mode, message):
    monkeypatch.setattr(surrogate_labels, "load_feature_extractor", lambda *args, **kwargs: BrokenExtractor(mode))
    with pytest.raises(ValueError, match=message):
        label_synthetic(generation_dir, tmp_path / "out", num_clusters=4, features="pixels", batch_size=4)
    assert list(tmp_path.iterdir()) == []


def test_label_synthetic_leaves_no_output_when_too_few_clusters_survive(generation_dir, tmp_path):
    with pytest.raises(ValueError, match="Cluster cohesion"):
        label_synthetic(generation_dir, tmp_path / "out", num_clusters=4, cohesion=1.0, features="pixels")
    assert list(tmp_path.iterdir()) == []


def test_cli_label_prints_the_table_and_summary(generation_dir, tmp_path, capsys):
    output = tmp_path / "labels"
    argv = ["label", "--synthetic", str(generation_dir), "--output", str(output), "--clusters", "4", "--features", "pixels"]
    assert main(argv + ["--cohesion", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "kept" in printed and "dropped" in printed and "tau = 0.500" in printed
    assert "[side] label done" in printed and str(output) in printed
    assert (output / CONTACT_SHEET).is_file()

    assert main(argv[:5] + ["--features", "pixels", "--clusters", "1000"]) == 2
    assert "side label: error: --clusters 1000 is more than the 48 synthetic images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv + ["--cohesion", "tight"])
