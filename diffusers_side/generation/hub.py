"""Upload a set of extraction candidates to the Hub as a data set with its card (private unless asked otherwise)."""

from __future__ import annotations

from dataclasses import asdict

from datasets import Dataset
from huggingface_hub import DatasetCard, DatasetCardData

from ..methods.registry import get_method
from ..storage.cards import render_card
from .settings import GenerationSettings


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
