"""Model and data set cards rendered from the Jinja templates in ``model_cards/``.

Every folder the plugin writes for the Hub (a trained target model, a SIDE pipeline, an extraction
data set) carries a ``README.md`` rendered here with huggingface_hub's own card classes, so the YAML
metadata block is valid and the body records how the artefact was made.

The templates live in the repository's top-level ``model_cards/`` folder. An installed package finds
them in ``diffusers_side/model_cards/`` (the packaging maps that folder there); a source checkout or an
editable install reads the top-level folder directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData
from huggingface_hub.repocard import RepoCard

from ..utils.atomic_io import write_text_atomic

TEMPLATE_DIRS = (Path(__file__).parents[1] / "model_cards", Path(__file__).parents[2] / "model_cards")


def template_path(template_name: str) -> Path:
    """Return the path of the card template called ``template_name`` (with or without ``.md``).

    Raises:
        `FileNotFoundError`: when no template directory holds it; the message lists the templates found.
    """
    file_name = template_name if template_name.endswith(".md") else f"{template_name}.md"
    for directory in TEMPLATE_DIRS:
        if (directory / file_name).is_file():
            return directory / file_name
    available = sorted({p.stem for d in TEMPLATE_DIRS if d.is_dir() for p in d.glob("*.md")})
    raise FileNotFoundError(f"No card template {file_name!r}; the available templates are {available}.")


def render_card(template_name: str, card_data: ModelCardData | DatasetCardData, **fields) -> RepoCard:
    """Render a card from a template in ``model_cards/``.

    Args:
        template_name (`str`):
            The template's file name in ``model_cards/``, e.g. ``"train_dpm"``.
        card_data (`ModelCardData` or `DatasetCardData`):
            The YAML metadata; a `DatasetCardData` gives a `DatasetCard`, anything else a `ModelCard`.
        **fields:
            The template's Jinja variables.

    Returns:
        `huggingface_hub.RepoCard`: the rendered card (`ModelCard` or `DatasetCard`).

    Example:

    ```py
    >>> from huggingface_hub import ModelCardData
    >>> from diffusers_side.storage.cards import render_card, template_path, write_card
    >>> template_path("train_dpm").name
    'train_dpm.md'
    >>> fields = {...}  # every variable the template uses, e.g. training/train_dpm.py::write_model_card
    >>> card = render_card("train_dpm", ModelCardData(library_name="diffusers"), **fields)
    >>> write_card(card, "ddpm-digits")
    PosixPath('ddpm-digits/README.md')
    ```
    """
    card_class = DatasetCard if isinstance(card_data, DatasetCardData) else ModelCard
    return card_class.from_template(card_data, template_path=str(template_path(template_name)), **fields)


def write_card(card: RepoCard, directory: str | os.PathLike) -> Path:
    """Write ``card`` to ``directory/README.md`` atomically and return the path."""
    return write_text_atomic(Path(directory) / "README.md", str(card))
