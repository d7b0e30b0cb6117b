"""What `evaluate` checks before it scores anything, and what it may write or delete in its output folder.

- the output is a new or empty folder, or an earlier evaluation (`diffusers_side.storage.outputs`); never a
  pipeline, a label output, a generation run or a demo, whose next ``side push`` would upload the report's
  training-image figures with it; never inside one of the inputs;
- no folder is given twice, and no two folders hold the same run;
- every generation folder holds its whole run (a missing shard would silently shrink N_G);
- every image header reads (a decompression bomb is refused by name, not decoded).
"""

from __future__ import annotations

from pathlib import Path

from ..storage.generation_folder import check_complete
from ..storage.image_files import check_image_files
from ..storage.outputs import EVALUATION, check_output_folder, write_manifest
from ..utils.state_files import REPORT
from .report import FIGURES_DIR, REPORT_JSON, REPORT_MD, write_report

MATCHES_FILE = "matches.parquet"


def check_inputs_and_output(generated: list[str], reference: str, output_dir: Path, output_kind: str = EVALUATION) -> None:
    """Refuse a folder given twice, an output inside an input, and an output that is another kind of artefact.

    Raises:
        `ValueError`, `FileExistsError`, `OSError`: naming the folder and the fix.
    """
    check_output_folder(output_dir, output_kind, command="`side evaluate`")
    resolved = [Path(path).resolve() for path in generated]
    for index, path in enumerate(resolved):
        if path in resolved[:index]:
            raise ValueError(
                f"--generated {generated[index]} is given twice; its images would be counted twice: pass each folder once."
            )
    output = output_dir.resolve()
    for source in [*generated, reference]:
        path = Path(source)
        if path.is_dir() and (output == path.resolve() or path.resolve() in output.parents):
            raise ValueError(
                f"--output {output_dir} is inside the input {source}; the report and figures would mix with its images: "
                "choose another --output."
            )


def check_image_set(source: str, dataset, column: str, generated: bool) -> None:
    """Every image header of a set reads; a generation folder holds its whole run."""
    check_image_files(dataset, column, source)
    if generated:
        indices = list(dataset["index"]) if "index" in dataset.column_names else None
        check_complete(source, len(dataset), indices)


def check_distinct_runs(sets: list) -> None:
    """Refuse two folders that record the same generation run (a copy): their images would be counted twice."""
    for index, image_set in enumerate(sets):
        for earlier in sets[:index]:
            if image_set.settings and image_set.settings == earlier.settings:
                raise ValueError(
                    f"--generated {earlier.source} and {image_set.source} hold the same run (identical generation.json); "
                    "its images would be counted twice: pass one of them."
                )


def remove_stale_figures(output_dir: Path, figures: dict) -> None:
    """Delete the figures an earlier report in ``output_dir`` listed and this one does not (nothing else)."""
    previous = output_dir / REPORT_JSON
    if not previous.is_file():
        return
    keep = {output_dir / path for path in figures.values()}
    for path in REPORT.read(previous).get("files", {}).get("figures", {}).values():
        figure = output_dir / path
        if figure not in keep and figure.parent == output_dir / FIGURES_DIR and figure.is_file() and not figure.is_symlink():
            figure.unlink(missing_ok=True)


def write_outputs(report: dict, output_dir: Path, figures: dict, output_kind: str) -> None:
    """Delete the figures an earlier report listed and this one does not, write the report, and list what the
    evaluation wrote in the folder's manifest (an evaluation folder only: a demo keeps its own marker)."""
    remove_stale_figures(output_dir, figures)
    write_report(report, output_dir)
    if output_kind == EVALUATION:
        write_manifest(output_dir, EVALUATION, [REPORT_JSON, REPORT_MD, MATCHES_FILE, *figures.values()])
