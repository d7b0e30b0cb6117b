"""What a `side label` output folder holds, who may replace it, and its contact sheet.

The folder is replaced as a whole by each run (`diffusers_side.utils.atomic_io.atomic_directory`), so
[`check_output_dir`] lets a run start only when every entry is one its manifest lists
(`diffusers_side.storage.outputs`); [`read_label_tensors`] checks the sidecar tensors against
``surrogate_labels.json``; [`write_contact_sheet`] draws the labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import PIL.Image
import PIL.ImageDraw
import torch
from datasets import Dataset

from ..storage.data import load_images
from ..storage.outputs import LABELS, check_output_folder, foreign_entries
from ..utils.atomic_io import atomic_path
from ..utils.safetensors_io import load_safetensors
from ..utils.state_files import SURROGATE_LABELS

if TYPE_CHECKING:
    from .surrogate_labels import SurrogateLabels

LABELS_JSON = SURROGATE_LABELS.name
CONTACT_SHEET = "contact_sheet.png"
CONTACT_SHEET_GAP = 4


def check_output_dir(output_dir: Path, synthetic_dir: Path) -> Path:
    """Refuse an output directory that would overwrite something other than an earlier label output; return it with
    a symbolic link resolved (the folder is replaced as a whole, so only the files its manifest lists may be there).

    Raises:
        `ValueError`, `FileExistsError`, `OSError`: naming the folder and the fix.
    """
    if output_dir.resolve() == synthetic_dir.resolve():
        raise ValueError(f"--output {output_dir} is the synthetic set itself; choose another directory.")
    folder = check_output_folder(output_dir, LABELS, command="`side label`")
    foreign = foreign_entries(folder, LABELS)
    if foreign:
        raise FileExistsError(
            f"--output {output_dir} holds files `side label` did not write ({', '.join(foreign[:5])}); re-running "
            "replaces the folder, so move them elsewhere or choose another --output."
        )
    return folder


def read_label_tensors(path: Path, num_labels: int) -> dict[str, torch.Tensor]:
    """The centroids ``(K', D)`` and the feature mean ``(D,)`` of ``surrogate_labels.safetensors``, checked against
    the K' labels of ``surrogate_labels.json``.

    Raises:
        `ValueError`: naming the file and the shapes.
    """
    tensors = load_safetensors(path, ("centroids", "feature_mean"))
    centroids, mean = tensors["centroids"], tensors["feature_mean"]
    if centroids.ndim != 2 or mean.ndim != 1 or centroids.shape != (num_labels, mean.shape[0]):
        raise ValueError(
            f"{path} holds centroids of shape {tuple(centroids.shape)} and a feature mean of shape {tuple(mean.shape)}, "
            f"but {LABELS_JSON} records {num_labels} labels; run `side label` again to rewrite both."
        )
    return tensors


def write_contact_sheet(
    dataset: Dataset,
    labels: SurrogateLabels,
    assigned: torch.Tensor,
    distances: torch.Tensor,
    path: str | os.PathLike,
    per_row: int = 8,
    tile: int = 64,
) -> None:
    """Save a PNG with one row per surrogate label: its ``per_row`` images closest to the centroid.

    Each row starts with the label, its KMeans cluster id, cohesion and image count; rows are
    ``tile`` pixels high plus a small white gap.
    """
    margin, row_height = 120, tile + CONTACT_SHEET_GAP
    sheet = PIL.Image.new("RGB", (margin + per_row * tile, labels.num_labels * row_height), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for label, cluster in enumerate(labels.kept_cluster_ids):
        members = torch.nonzero(assigned == label).flatten()
        closest = members[torch.argsort(distances[members])][:per_row].tolist()
        top = label * row_height
        caption = f"label {label}\ncluster {cluster}\ncoh {labels.cohesion[cluster]:.3f}\nn {len(members)}"
        draw.multiline_text((4, top + 4), caption, fill="black")
        for column, image in enumerate(load_images(dataset, "image", closest)):
            resample = PIL.Image.NEAREST if image.width < tile else PIL.Image.BICUBIC
            sheet.paste(image.convert("RGB").resize((tile, tile), resample), (margin + column * tile, top))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
