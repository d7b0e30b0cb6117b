"""Blind candidates: ranked without the training set, scored by `side evaluate` (precision@k, distinct@k)."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import write_generation_dir
from diffusers_side.candidates.files import write_candidates
from diffusers_side.candidates.ranking import group_scores, rank_candidates
from diffusers_side.cli import main as side
from diffusers_side.evaluation.bands import Band, default_bands
from diffusers_side.evaluation.candidates import candidate_metrics
from diffusers_side.evaluation.evaluate import evaluate
from diffusers_side.storage.candidate_files import CANDIDATES_JSON, CANDIDATES_PARQUET, read_candidates


def copies(prototype: torch.Tensor, count: int, generator: torch.Generator, noise: float = 0.02) -> torch.Tensor:
    return (prototype + noise * torch.randn(count, prototype.numel(), generator=generator)).clamp(0, 1)


def constructed_set(seed: int = 0):
    """Three memorized images recurring 8, 3 and 2 times among 60 novel generations, shuffled; the groups' rows."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(3, 64, generator=generator)
    parts = [copies(prototypes[i], count, generator) for i, count in enumerate((8, 3, 2))]
    rows = torch.cat([*parts, torch.rand(60, 64, generator=generator)])
    order = torch.randperm(len(rows), generator=generator)
    position = torch.argsort(order)  # where original row j lands
    groups = [set(position[start : start + count].tolist()) for start, count in ((0, 8), (8, 3), (11, 2))]
    return rows[order], groups


def test_groups_come_first_largest_and_merged():
    rows, groups = constructed_set()
    ranked = rank_candidates(rows)
    assert ranked.group_size[:3].tolist() == [8, 3, 2] and (ranked.group_size[3:] == 1).all()
    for rank, group in enumerate(groups):
        assert int(ranked.row[rank]) in group
        assert {int(ranked.row[rank]), *ranked.members[rank]} == group, "the group's copies are merged into its candidate"
    assert len(ranked) == 60 + 3, "every novel generation stays listed, every copy is merged"
    assert (ranked.tightness[:3] < 0.5).all() and (ranked.tightness[3:] >= 0.5).all()
    assert sorted([int(r) for r in ranked.row] + [m for ms in ranked.members for m in ms]) == list(range(73))


def test_a_group_larger_than_carlinis_n_is_still_found():
    """120 copies among 200 novel images: the 50 nearest are all copies, so normalizing by them would hide the group."""
    generator = torch.Generator().manual_seed(1)
    rows = torch.cat([copies(torch.rand(64, generator=generator), 120, generator), torch.rand(200, 64, generator=generator)])
    ranked = rank_candidates(rows)
    assert ranked.group_size[0] == 120 and int(ranked.row[0]) < 120
    assert len(ranked) == 201
    nearest, _ = torch.cdist(rows[:120].double(), rows.double()).div(8).sort(dim=1)
    naive = nearest[:, 1] / (0.5 * nearest[:, 1:51].mean(dim=1))  # Carlini's normalizer over the 50 nearest
    assert (naive > 0.5).all() and (group_scores(nearest[:, 1:].numpy(), 0.5, 50)[:, 118] < 0.5).all()


def test_bad_settings_are_refused():
    rows = torch.rand(10, 4)
    with pytest.raises(ValueError, match=r"threshold=0 must be a finite number > 0"):
        rank_candidates(rows, threshold=0)
    with pytest.raises(ValueError, match="at least 3 generations"):
        rank_candidates(rows[:2])


def test_precision_and_distinct_at_k():
    bands = default_bands("carlini")  # positions: 0 high, 1 mid, 2 low
    best_index = np.array([5, 5, 6, 7, 8, 9])
    assigned = np.array([0, 1, 2, -1, 1, 0])  # hits (mid or high): rows 0, 1, 4, 5
    result = candidate_metrics(np.array([1, 0, 3, 4, 2, 5]), best_index, assigned, bands, "carlini", ks=(1, 2, 4, 10))
    assert result["bands"] == ["mid", "high"]
    assert result["base_rate"] == pytest.approx(4 / 6) and result["distinct_in_set"] == 3
    assert [result["at"][k]["precision"] for k in ("1", "2", "4")] == [1.0, 1.0, 0.75]
    assert [result["at"][k]["distinct"] for k in ("1", "2", "4")] == [1, 1, 2]  # rows 1 and 0 copy the same image 5
    assert result["at"]["10"]["k"] == 6 and result["at"]["10"]["hits"] == 4 and result["at"]["10"]["distinct"] == 3
    assert result["at"]["4"]["per_band"] == {"high": 1, "mid": 2, "low": 0}
    one_band = candidate_metrics(np.array([0, 1]), np.array([1, 2]), np.array([0, -1]), [Band("only", 0.0, 1.0)], "carlini", ks=(2,))
    assert one_band["bands"] == ["only"] and one_band["at"]["2"]["precision"] == 0.5


def as_images(rows: torch.Tensor) -> list:
    return [PIL.Image.fromarray((row.view(8, 8).numpy() * 255).round().astype(np.uint8)) for row in rows]


@pytest.fixture
def folders(tmp_path):
    rows, groups = constructed_set(seed=2)
    generated = write_generation_dir(tmp_path / "extract", as_images(rows), method="uncond")
    generator = torch.Generator().manual_seed(3)
    reference = tmp_path / "reference"
    reference.mkdir()
    for i, image in enumerate(as_images(torch.rand(60, 64, generator=generator))):
        image.save(reference / f"{i:03d}.png")
    # the memorized images are training images: the mean of each group
    for g, group in enumerate(groups):
        as_images(rows[sorted(group)].mean(dim=0, keepdim=True))[0].save(reference / f"memorized-{g}.png")
    return generated, reference, groups


def test_written_list_is_read_back_and_a_stale_one_refused(folders):
    generated, _, groups = folders
    summary = write_candidates(generated)
    assert (generated / CANDIDATES_PARQUET).is_file() and (generated / "candidates.png").is_file()
    assert [item["group_size"] for item in summary["top"][:3]] == [8, 3, 2] and summary["num_groups"] == 3
    table = read_candidates(generated, 73)
    assert table["row"][0] in groups[0] and table["num_members"][:3] == [7, 2, 1]
    with pytest.raises(ValueError, match="computed on other generations"):
        read_candidates(generated, 74)
    assert read_candidates(generated.parent, 5) is None


def test_evaluate_reports_precision_at_k_of_the_list(folders, tmp_path):
    generated, reference, groups = folders
    write_candidates(generated)
    report = evaluate([generated], str(reference), tmp_path / "eval")
    result = report["candidates"][str(generated)]
    # the three group candidates copy the three memorized training images (high band); novel images copy nothing
    assert result["at"]["10"]["hits"] == 3 and result["at"]["10"]["distinct"] == 3
    assert result["at"]["10"]["precision"] == pytest.approx(0.3) and result["distinct_in_set"] == 3
    assert (tmp_path / "eval" / result["figure"]).is_file()
    assert "## Blind candidates" in (tmp_path / "eval" / "report.md").read_text()
    stored = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert stored["candidates"][str(generated)]["base_rate"] == pytest.approx(13 / 73)
    # the list is matched to its own folder's generations when another folder comes first
    other = write_generation_dir(tmp_path / "other", as_images(torch.rand(5, 64)), method="cond", first_seed=900)
    both = evaluate([other, generated], str(reference), tmp_path / "eval-both")
    assert both["candidates"][str(generated)]["at"] == result["at"] and str(other) not in both["candidates"]


def test_cli_writes_the_list_and_refuses_an_image_folder_without_output(folders, tmp_path, capsys):
    generated, reference, _ = folders
    assert side(["candidates", "--generated", str(generated)]) == 0
    assert "x8" in capsys.readouterr().out and (generated / CANDIDATES_JSON).is_file()
    assert side(["candidates", "--generated", str(reference)]) == 2
    assert "not a generation folder" in capsys.readouterr().err
    assert side(["candidates", "--generated", str(reference), "--output", str(tmp_path / "list")]) == 0
    assert (tmp_path / "list" / CANDIDATES_PARQUET).is_file()
