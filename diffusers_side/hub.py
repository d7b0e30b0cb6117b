"""Uploads to the Hugging Face Hub: thin calls into huggingface_hub / datasets with a card we render.

Only the payload (folder layout, card text and metadata) is built here; the network call is a single
call into the library, so everything but the transfer is tested offline.
"""

from __future__ import annotations

import os
from dataclasses import asdict

from datasets import Dataset
from huggingface_hub import DatasetCard, DatasetCardData

from .cards import render_card
from .generation_folder import GenerationSettings
from .methods import get_method


def extraction_card(settings: GenerationSettings, command: str) -> DatasetCard:
    """The dataset card of a set of extraction candidates."""
    card_data = DatasetCardData(
        license="other",
        tags=["diffusers-side", "memorization-audit", "synthetic", settings.method],
        pretty_name=f"SIDE {settings.method} candidates",
    )
    return render_card(
        "extraction_dataset",
        card_data,
        method_description=get_method(settings.method).description,
        command=command,
        **asdict(settings),
    )


def push_extraction(
    dataset: Dataset,
    settings: GenerationSettings,
    repo_id: str,
    command: str,
    token: str | None = None,
    private: bool = True,
) -> str:
    """Upload the candidates (parquet shards via `Dataset.push_to_hub`) and then their card.

    Extracted images may reproduce private training data, so the data set repo is created **private**
    unless ``private=False`` (CLI: ``--public``) is passed.
    """
    dataset.push_to_hub(repo_id, token=token, private=private)
    extraction_card(settings, command).push_to_hub(repo_id, repo_type="dataset", token=token)
    return repo_id


# Never uploaded from a pipeline folder: resumable training state, tracker logs, unfinished writes.
HUB_IGNORE_PATTERNS = ["checkpoint-*", ".checkpoint-*", "logs/*", "*.tmp", ".*.tmp"]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload with diffusers-side",
) -> str:
    """Upload a pipeline folder (weights, configs and its README.md card) to a model repo; return the commit URL."""
    from huggingface_hub import create_repo, upload_folder

    repo = create_repo(repo_id, token=token, private=private, exist_ok=True)
    commit = upload_folder(
        repo_id=repo.repo_id, folder_path=str(folder), commit_message=commit_message,
        ignore_patterns=HUB_IGNORE_PATTERNS, token=token,
    )
    return str(commit)
