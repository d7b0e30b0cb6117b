"""The audit report: ``report.json``, ``report.md`` and the figures of a SIDE evaluation.

- ``report.json`` holds every number and every setting (similarity, bands and their rationale,
  N_G, seeds, guidance scales, generation settings, package versions).
- ``report.md`` shows the numbers as the paper's Table 1 (method x AMS / UMS per band, plus the
  95th-percentile similarity and Gu et al.'s memorization ratio), the bands and the figures.
- ``figures/matches-<method>.png``: each extracted image beside its best training match, sorted and
  grouped by band, most similar first (the paper's Fig. 4).
- [`plot_sweep`]: AMS and UMS against the guidance scale, per band (the paper's Fig. 10).

Every file is written atomically (a temporary file in the same folder, then `os.replace`).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
from pathlib import Path
from typing import Sequence

import PIL.Image
import PIL.ImageDraw
from diffusers.utils import logging

from ..storage.image_files import to_8bit
from ..utils.atomic_io import atomic_path, write_text_atomic
from .bands import Band, band_interval, display_order

logger = logging.get_logger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
FIGURES_DIR = "figures"
VERSIONED_PACKAGES = (
    "diffusers-side",
    "diffusers",
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "numpy",
    "scikit-learn",
    "pillow",
    "matplotlib",
)
# Figures: tile side in pixels (small images are upscaled by an integer factor with nearest
# neighbour, so a 16x16 digit becomes 64x64), pairs per row, caption height.
TILE_SIZE = 64
PAIRS_PER_ROW = 4
CAPTION_HEIGHT = 12
HEADER_HEIGHT = 16
PADDING = 4
PAIR_GAP = 16


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the results (``None`` when not installed)."""
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _bands(report: dict) -> list[Band]:
    return [Band(**band) for band in report["bands"]]


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def ums_counting(report: dict) -> str:
    """How the report counted UMS: ``"best"`` or ``"pairs"`` (reports written before the choice existed: ``"best"``)."""
    return report.get("ums", {}).get("counting", "best")


def ums_sentence(report: dict) -> str:
    """The definition of the report's UMS, which counting is the default and why."""
    ums = report.get("ums")
    if ums is None:
        return "UMS counts best matches only (reports of this version had no other counting)."
    default = "the default" if ums["counting"] == ums["default"] else f"not the default, `{ums['default']}`"
    return f"{ums['definition']} Counting: `{ums['counting']}` ({default}). {ums['why_default']}"


def format_table(report: dict) -> str:
    """The results as a Markdown table in the shape of the paper's Table 1.

    One row per method; AMS and UMS (in %) per band from least to most similar, the 95th-percentile
    best-match similarity and Gu et al.'s memorization ratio (in %). The UMS headers name how UMS was
    counted (``best`` or ``pairs``, see `diffusers_side.evaluation.metrics.UMS_COUNTINGS`).

    Args:
        report (`dict`): the report returned by `diffusers_side.evaluation.evaluate.evaluate` (it reads
            ``report["similarity"]["kind"]``, ``report["bands"]`` and ``report["methods"]``).

    Returns:
        `str`: the table, one line per row.
    """
    bands = display_order(_bands(report), report["similarity"]["kind"])
    header = ["Method", "N_G"]
    counting = ums_counting(report)
    header += [f"AMS {band.name} (%)" for band in bands] + [f"UMS {band.name} ({counting}, %)" for band in bands]
    header += ["p95 similarity", "Mem. ratio (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for method, result in report["methods"].items():
        cells = [method, str(result["num_generations"])]
        cells += [_percent(result["ams"][band.name]) for band in bands]
        cells += [_percent(result["ums"][band.name]) for band in bands]
        cells += [f"{result['p95_similarity']:.4f}", _percent(result["memorization_ratio"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    """The full ``report.md`` text: settings, the Table 1 layout, band edges and rationale, figures."""
    similarity = report["similarity"]
    bands = _bands(report)
    lines = [
        "# SIDE extraction report",
        "",
        f"- Similarity: `{similarity['name']}` ({similarity['description']}; {similarity['direction']}).",
        f"- Reference: `{report['reference']['source']}` ({report['reference']['num_images']} images).",
        "- Generated: " + ", ".join(f"`{item['path']}` ({item['num_images']} images)" for item in report["generated"]) + ".",
        "",
        "## Results",
        "",
        format_table(report),
        "",
        "AMS(band): fraction of generations whose best training match lies in the band. "
        f"{ums_sentence(report)} Compare UMS only at equal N_G and with the same counting. "
        f"p95 similarity: {similarity['p95_definition']} "
        "Mem. ratio: fraction of generations whose nearest training image is closer than 1/3 of the "
        f"second nearest (Gu et al. 2023), on {similarity['memorization_distance']}.",
        "",
        f"Per-generation best match, score, second-best score and distances: `{report['files']['matches']}`.",
        "",
        "## Bands",
        "",
        f"Source: {report['bands_source']}. Intervals are [low, high); the band with the largest edges includes its upper edge.",
        "",
        "| Band | Interval |",
        "|---|---|",
    ]
    lines += [f"| {band.name} | {band_interval(band, bands)} |" for band in bands]
    lines += ["", report["bands_rationale"], ""]
    if "candidates" in report:
        lines += candidate_section(report["candidates"])
    if "classifiers" in report:
        lines += classifier_accuracy_section(report["classifiers"])
    if "guidance_selection" in report:
        lines += guidance_selection_section(report["guidance_selection"], bands, similarity["kind"])
    figures = report.get("files", {}).get("figures", {})
    if figures:
        lines += ["## Extracted images and their best training match", ""]
        lines += [f"### {method}\n\n![{method}]({path})\n" for method, path in figures.items()]
    lines += ["## Settings", "", "```json", json.dumps(report["settings"], indent=2), "```", ""]
    lines += ["Package versions: " + ", ".join(f"{name} {version}" for name, version in report["versions"].items()), ""]
    return "\n".join(lines)


def candidate_table(candidates: dict) -> str:
    """The candidate metrics as a Markdown table, one row per generation set."""
    ks = list(next(iter(candidates.values()))["at"])
    header = ["Generations", "Method", "Candidates", "Random generation (%)"]
    header += [f"P@{k} (%)" for k in ks] + [f"distinct@{k}" for k in ks] + ["distinct in set"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for source, result in candidates.items():
        cells = [f"`{Path(source).name}`", result["method"], str(result["num_candidates"]), f"{100 * result['base_rate']:.1f}"]
        cells += [f"{100 * result['at'][k]['precision']:.1f}" for k in ks]
        cells += [str(result["at"][k]["distinct"]) for k in ks] + [str(result["distinct_in_set"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def candidate_section(candidates: dict) -> list[str]:
    """``report.md`` lines on the blind candidate lists (empty when no set had one)."""
    if not candidates:
        return []
    bands = " + ".join(next(iter(candidates.values()))["bands"])
    return [
        "## Blind candidates",
        "",
        "Each extraction's candidate list was ranked *without* the training set (`candidates.parquet` beside its "
        "generations: near-duplicate groups among the generations, largest and tightest first, duplicates merged). "
        f"P@k: fraction of the top k candidates whose best training match lies in the {bands} band(s); distinct@k: the "
        "distinct training images they copy; random generation: the same fraction for a generation drawn at random; "
        "distinct in set: what all the generations copy in those bands.",
        "",
        candidate_table(candidates),
        "",
    ]


def classifier_accuracy_section(classifiers: dict) -> list[str]:
    """``report.md`` lines: each classifier's accuracy on clean images and per timestep quartile.

    Args:
        classifiers (`dict`): name -> ``{"global_step", "num_labels", "evaluated_on", "clean", "q0", ..., "q3"}``,
            the accuracies as `diffusers_side.training.classifier.evaluate_per_quartile` writes them into ``train_log.json``.
    """
    quartiles = sorted(key for key in next(iter(classifiers.values())) if re.fullmatch(r"q\d+", key))
    first = next(iter(classifiers.values()))
    header = ["Classifier", "Steps", "Evaluated on", "chance", "clean"]
    header += [f"{q} (t {first[q]['timesteps'][0]}-{first[q]['timesteps'][1]})" for q in quartiles]
    lines = [
        "## Classifier accuracy per timestep quartile",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|",
    ]
    for name, result in classifiers.items():
        cells = [name, str(result["global_step"]), result["evaluated_on"], _percent(1 / result["num_labels"])]
        cells += [_percent(result[key]["accuracy"]) for key in ("clean", *quartiles)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Accuracy (%) on images the classifier was not trained on, clean and noised with t drawn uniformly inside "
        "each quartile of the training timesteps (the time-independent classifier reads the same noisy images). "
        "Chance: 1 / number of labels. Where a classifier is near chance, guidance at those timesteps is mostly noise.",
        "",
    ]
    return lines


def guidance_selection_section(selection: dict, bands: Sequence[Band], kind: str) -> list[str]:
    """``report.md`` lines: the lambda sweep on the selection seed, the lambda it chose and the criterion that chose it."""
    blind = "blind_groups" in selection
    ordered = display_order(bands, kind)
    guarded = blind and selection.get("guard_limit") is not None
    columns = (["generations", "blind groups (>= 2)", "groups per generation", *(["in target cluster (%)"] if guarded else [])]
               if blind else [f"AMS {b.name} (%)" for b in ordered])
    header = ["lambda", *columns, "chosen"]
    rule = selection.get("rule", selection["criterion"])  # reports written before the criterion had a name
    lines = [
        "## Guidance scale selection",
        "",
        f"`{selection['method']}` at every lambda on the selection seed {selection['selection_seed']} "
        f"({selection['num_images']} images each, other image seeds than the reported run's). "
        f"**Criterion: {selection['criterion'] if 'rule' in selection else 'auditor-tuned'}** - {rule}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---:"] * (len(header) - 1) + ["---"]) + "|",
    ]
    for scale, row in (selection["blind_groups"] if blind else selection["ams"]).items():
        chosen = "yes" if float(scale) == selection["selected"] else ""
        cells = ([str(row["num_generations"]), str(row["num_groups"]), f"{row['groups_per_generation']:.4f}",
                  *([_percent(row["in_cluster_rate"])] if guarded else [])] if blind
                 else [_percent(row[band.name]) for band in ordered])
        lines.append("| " + " | ".join([scale, *cells, chosen]) + " |")
    if guarded:
        lines += ["", f"Collapse guard: lambdas above {selection['guard_limit']:g}, where the labeller's in-target-cluster "
                  "rate peaks, were not eligible (past it the steering classifier is fooled rather than the cluster "
                  "reached)."]
    return [*lines, ""]


def write_report(report: dict, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json`` and ``report.md`` into ``output_dir`` (atomically) and return their paths."""
    output_dir = Path(output_dir)
    json_path = write_text_atomic(output_dir / REPORT_JSON, json.dumps(report, indent=2, sort_keys=False) + "\n")
    markdown_path = write_text_atomic(output_dir / REPORT_MD, render_markdown(report))
    return {"json": json_path, "markdown": markdown_path}


def figure_name(method: str) -> str:
    """File name of a method's match figure (the method name made file-system safe)."""
    return f"matches-{re.sub(r'[^A-Za-z0-9_.-]+', '_', method).strip('_') or 'method'}.png"


def _tile(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """Upscale a small image by an integer factor (nearest, so pixels stay sharp); shrink a large one."""
    image = to_8bit(image).convert("RGB")
    side = max(image.size)
    if side <= size:
        factor = max(1, size // side)
        return image.resize((image.width * factor, image.height * factor), PIL.Image.NEAREST)
    image = image.copy()
    image.thumbnail((size, size), PIL.Image.BICUBIC)
    return image


def save_match_figure(
    sections: Sequence[tuple[str, int, Sequence[tuple[PIL.Image.Image, PIL.Image.Image, str]]]],
    path: str | os.PathLike,
    title: str,
    tile_size: int = TILE_SIZE,
) -> Path:
    """Draw extracted images beside their best training match, one section per band (the paper's Fig. 4).

    Args:
        sections: one ``(band_header, total_in_band, pairs)`` per band, most similar band first; each
            pair is ``(generated_image, training_image, caption)``, already sorted and capped.
        path: the PNG to write.
        title (`str`): the line on top of the figure.
        tile_size (`int`): images are shown at about this many pixels per side.

    Returns:
        `Path`: ``path``.
    """
    all_pairs = [pair for _, _, pairs in sections for pair in pairs]
    tiles = {id(image): _tile(image, tile_size) for pair in all_pairs for image in pair[:2]}
    tile_w = max([tile.width for tile in tiles.values()] + [tile_size])
    tile_h = max([tile.height for tile in tiles.values()] + [tile_size])
    pair_w = 2 * tile_w + PAIR_GAP + PADDING
    width = max(PAIRS_PER_ROW * pair_w + PADDING, 360)
    row_h = tile_h + CAPTION_HEIGHT + PADDING
    rows = [max(1, math.ceil(len(pairs) / PAIRS_PER_ROW)) for _, _, pairs in sections]
    height = HEADER_HEIGHT + sum(HEADER_HEIGHT + count * row_h for count in rows) + PADDING
    canvas = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    draw.text((PADDING, 2), title, fill="black")
    top = HEADER_HEIGHT
    for (header, total, pairs), count in zip(sections, rows):
        shown = f" (showing {len(pairs)})" if len(pairs) < total else ""
        draw.text((PADDING, top + 2), f"{header}: {total} generation(s){shown}" + ("" if pairs else " - none"), fill="black")
        top += HEADER_HEIGHT
        for position, (generated, training, caption) in enumerate(pairs):
            left = PADDING + (position % PAIRS_PER_ROW) * pair_w
            y = top + (position // PAIRS_PER_ROW) * row_h
            canvas.paste(tiles[id(generated)], (left, y))
            canvas.paste(tiles[id(training)], (left + tile_w + PADDING // 2, y))
            draw.text((left, y + tile_h + 1), caption, fill="black")
        top += count * row_h
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def plot_sweep(results_by_scale: dict[float, dict], path: str | os.PathLike) -> Path:
    """Plot AMS and UMS against the guidance scale, one line per method and band (the paper's Fig. 10).

    Args:
        results_by_scale (`dict[float, dict]`): guidance scale -> the report `evaluate` returned for
            the generations made at that scale. All reports must use the same similarity and bands.
        path: the PNG to write.

    Returns:
        `Path`: ``path``.

    Raises:
        `ValueError`: on an empty dict, or reports with different similarities or bands.

    Example:

    ```py
    >>> from diffusers_side.evaluation.report import plot_sweep
    >>> plot_sweep({0.0: report_at_0, 2.0: report_at_2}, "sweep.png")
    ```
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results_by_scale:
        raise ValueError("No results to plot: results_by_scale is empty.")
    scales = sorted(results_by_scale)
    first = results_by_scale[scales[0]]
    for scale in scales:
        report = results_by_scale[scale]
        if report["bands"] != first["bands"] or report["similarity"]["name"] != first["similarity"]["name"]:
            raise ValueError(
                f"The report at guidance scale {scale:g} uses different bands or similarity from the one at {scales[0]:g}; "
                "evaluate every scale with the same --similarity and --bands."
            )
    bands = display_order(_bands(first), first["similarity"]["kind"])
    methods = list(dict.fromkeys(method for scale in scales for method in results_by_scale[scale]["methods"]))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    styles = ["-", "--", ":", "-."]
    for axis, metric in zip(axes, ("ams", "ums")):
        for band_position, band in enumerate(bands):
            for method_position, method in enumerate(methods):
                points = [
                    (scale, 100 * results_by_scale[scale]["methods"][method][metric][band.name])
                    for scale in scales
                    if method in results_by_scale[scale]["methods"]
                ]
                axis.plot(
                    [x for x, _ in points],
                    [y for _, y in points],
                    marker="o",
                    color=f"C{band_position}",
                    linestyle=styles[method_position % len(styles)],
                    label=f"{band.name}" + (f" ({method})" if len(methods) > 1 else ""),
                )
        axis.set_xlabel("guidance scale")
        axis.set_ylabel(f"{metric.upper()} (%)" + (f", {ums_counting(first)}" if metric == "ums" else ""))
        axis.set_title(f"{metric.upper()} per band ({first['similarity']['name']})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return Path(path)
