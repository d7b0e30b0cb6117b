"""Hub uploads: the payload (cards, folder, parquet data) is built here; the transfer is one library call."""

import dataclasses

import datasets
import huggingface_hub
from huggingface_hub import DatasetCard

from diffusers_side.cli import main as side
from diffusers_side.generation import hub
from diffusers_side.generation.engine import GenerationSettings

SETTINGS = GenerationSettings(pipeline="auditor/ddpm-digits", method="side", num_images=4, seed=3, guidance_scale=2.0,
                              classifier="audit/side-pipeline")


def test_extraction_card_states_purpose_settings_and_command():
    card = hub.extraction_card(SETTINGS, "side extract --method side --num-images 4")
    assert isinstance(card, DatasetCard)
    assert {"diffusers-side", "memorization-audit", "side"} <= set(card.data.tags)
    text = str(card)
    for expected in ("Threat model", "White-box", "| Guidance scale (lambda) | 2.0 |", "| Images (N_G) | 4 |",
                     "audit/side-pipeline", "side extract --method side --num-images 4", "time-dependent classifier guidance"):
        assert expected in text
    assert "guidance-space x0" not in text
    x0_card = str(hub.extraction_card(dataclasses.replace(SETTINGS, guidance_space="x0"), "side extract --guidance-space x0"))
    assert "| Guidance scale (lambda) | 2.0 (guidance on the predicted clean image, `--guidance-space x0`" in x0_card


def test_push_extraction_uploads_data_then_card(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, repo, token=None, private=None: calls.append(("data", repo, len(self), private)))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo, repo_type, token=None: calls.append(("card", repo, repo_type)))
    data = datasets.Dataset.from_dict({"seed": [1, 2, 3]})
    assert hub.push_extraction(data, SETTINGS, "me/candidates", "side extract ...") == "me/candidates"
    assert calls == [("data", "me/candidates", 3, True), ("card", "me/candidates", "dataset")]


def test_side_push_uploads_pipeline_folder_without_checkpoints(tmp_path, monkeypatch, capsys):
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "README.md").write_text("---\nlibrary_name: diffusers\n---\n# card")
    uploads = {}

    class Repo:
        repo_id = "me/side-audit"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kwargs: Repo())
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kwargs: uploads.update(kwargs) or "commit-url")
    assert side(["push", str(tmp_path), "--repo", "me/side-audit"]) == 0
    assert uploads["folder_path"] == str(tmp_path) and uploads["repo_id"] == "me/side-audit"
    assert "checkpoint-*" in uploads["ignore_patterns"]
    assert "push done" in capsys.readouterr().out


def test_side_push_refuses_a_pipeline_without_card(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text("{}")
    assert side(["push", str(tmp_path), "--repo", "me/x"]) == 2
    assert "has no README.md model card" in capsys.readouterr().err

