"""The blind candidate list on disk, beside the generations it ranks: its one definition.

```
DIR/candidates.parquet   one row per candidate, best first: rank, row, index, seed, target, group_size, tightness,
                         num_members, members, nearest_row, nearest_distance
DIR/candidates.json      the ranking's settings, the generation settings it was computed on, the top of the list
DIR/candidates.png       the top candidates, each beside its nearest other generation
```

``DIR`` is the generation folder itself, or an output folder for a source that is not a generation folder (an image
folder, a Hub data set), so that no file is ever added among someone else's images. `diffusers_side.candidates.files`
writes the list; ``side evaluate`` reads it through [`read_candidates`], which refuses a list computed on other
generations.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet

from ..utils.state_files import CANDIDATES_SUMMARY
from .generation_folder import is_generation_folder, read_settings

CANDIDATES_PARQUET = "candidates.parquet"
CANDIDATES_JSON = "candidates.json"
CANDIDATES_FIGURE = "candidates.png"


def candidates_dir(source: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> Path:
    """Where the list of ``source`` goes: ``output_dir`` if given, else the generation folder ``source`` itself.

    Raises:
        `ValueError`: ``source`` is not a generation folder and no ``output_dir`` is given.
    """
    if output_dir is not None:
        return Path(output_dir)
    if not is_generation_folder(source):
        raise ValueError(
            f"{source} is not a generation folder (no generation.json), so the candidate list is not written among its "
            "images; pass --output DIR (output_dir=)."
        )
    return Path(source)


def read_candidates(source: str | os.PathLike, num_generations: int, directory: str | os.PathLike | None = None) -> dict | None:
    """The candidate list of ``source`` as columns (``None`` when there is none), checked against the generations.

    Args:
        source: the generation folder (or the source the list was computed on).
        num_generations (`int`): how many generations ``source`` holds now.
        directory: where the list lies (default: ``source``).

    Raises:
        `ValueError`: the list was computed on another set of generations (other settings or count).
    """
    directory = Path(directory or source)
    if not (directory / CANDIDATES_JSON).is_file() or not (directory / CANDIDATES_PARQUET).is_file():
        return None
    summary = CANDIDATES_SUMMARY.read(directory / CANDIDATES_JSON)
    if summary["num_generations"] != num_generations or summary["generation_settings"] != read_settings(source):
        raise ValueError(
            f"The candidate list in {directory} was computed on other generations ({summary['num_generations']} then, "
            f"{num_generations} now, or other settings); run `side candidates --generated {source}` again."
        )
    try:
        table = pyarrow.parquet.read_table(directory / CANDIDATES_PARQUET).to_pydict()
    except (pyarrow.ArrowException, OSError) as error:
        raise ValueError(f"{directory / CANDIDATES_PARQUET} is damaged ({type(error).__name__}: {error}); run `side "
                         f"candidates --generated {source}` again to rewrite it.") from None
    return {**table, "summary": summary}
