"""Summarise `side_study.py` runs: a markdown table, a compact JSON and the figures.

Reads the JSON lines written by ``side_study.py --output`` and writes, next to ``--output``:

- ``NAME.json``: every configuration without its per-generation arrays (AMS / UMS with 95 % intervals,
  hit rate, seconds, distinct images per CPU-minute, distinct-vs-N_G curve);
- ``NAME-distinct.png``: distinct training images (high and mid band) against N_G for every
  configuration of the report seed (the paper's Fig. 5);
- ``NAME-lambda.png``: AMS mid / high against lambda per variant (selection seed).

Usage::

    python benchmarks/side_study_report.py outputs/study/emb-*.jsonl --output benchmarks/results/side_study_embedded
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from side_study import bootstrap_distinct

from diffusers_side.evaluation.bands import assign_bands, default_bands

PER_GENERATION = ("best_index", "score", "machine")
NOT_STORED = (*PER_GENERATION, "run_suffix")  # the label already carries the suffix


def load(paths: list[str]) -> list[dict]:
    """The rows of every file, UMS intervals recomputed from the stored per-generation matches."""
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for row in rows:
        scores, best_index = np.array(row["score"]), np.array(row["best_index"])
        bands = default_bands("carlini")
        assigned = assign_bands(scores, bands)
        for position, band in enumerate(bands):
            in_band = assigned == position
            interval = bootstrap_distinct(in_band, best_index, seed=0)
            if round(interval[0] * len(scores)) != row["unique_counts"][band.name]:
                raise ValueError(f"{row['config']}: stored scores do not reproduce the {band.name}-band count")
            row["ums"][band.name] = interval
    return rows


def label_runs(rows: list[dict]) -> None:
    """Give each row a ``run_suffix`` (its run folder's name when the guided rows come from several runs, e.g.
    synthetic sets drawn with different samplers; UnCond uses no run) and a ``label``: configuration + suffix."""
    runs = {row["run"] for row in rows if row["method"] != "uncond"}
    for row in rows:
        several = len(runs) > 1 and row["method"] != "uncond"
        row["run_suffix"] = f" ({Path(row['run']).name})" if several else ""
        row["label"] = row["config"] + row["run_suffix"]


def cell(interval: list[float]) -> str:
    value, low, high = (100 * v for v in interval)
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def table(rows: list[dict]) -> str:
    lines = [
        "| configuration | seed | N_G | AMS mid (%) | AMS high (%) | UMS mid (%) | UMS high (%) | hit (%) | distinct high+mid / CPU-min |",
        "|---|---:|---:|---|---|---|---|---:|---:|",
    ]
    for row in rows:
        hit = "-" if row["hit_rate"] is None else f"{100 * row['hit_rate']:.1f}"
        per_minute = row["distinct_per_cpu_minute"]
        lines.append(
            f"| {row['label']} | {row['seed']} | {row['num_images']} | {cell(row['ams']['mid'])} | {cell(row['ams']['high'])} | "
            f"{cell(row['ums']['mid'])} | {cell(row['ums']['high'])} | {hit} | {per_minute['high'] + per_minute['mid']:.2f} |"
        )
    return "\n".join(lines)


def plot_distinct(rows: list[dict], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, band in zip(axes, ("high", "mid")):
        for row in rows:
            curve = sorted((int(k), v) for k, v in row["curve"][band].items())
            axis.plot([k for k, _ in curve], [v for _, v in curve], marker="o", label=row["label"])
        axis.set_xlabel("N_G")
        axis.set_ylabel(f"distinct training images, {band} band")
    save_figure(figure, axes, path)


def plot_lambda(rows: list[dict], path: Path) -> None:
    curves = defaultdict(list)
    for row in rows:
        if row["method"] != "uncond":
            window = "all" if row["window"][0] == float("-inf") else f"{row['window'][0]:g}:{row['window'][1]:g}"
            curves[f"{row['method']}/{row['sampler']}/{row['selection']}/{window}{row['run_suffix']}"].append(row)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, band in zip(axes, ("mid", "high")):
        for name, points in curves.items():
            points = sorted(points, key=lambda r: r["scale"])
            axis.plot([p["scale"] for p in points], [100 * p["ams"][band][0] for p in points], marker="o", label=name)
        for row in rows:
            if row["method"] == "uncond":
                axis.axhline(100 * row["ams"][band][0], linestyle="--", color="grey" if row["sampler"] == "ddim" else "black",
                             label=f"uncond/{row['sampler']}")
        axis.set_xscale("symlog", linthresh=0.01)  # x0 guidance's lambdas (0.02-0.2) beside the paper's (1-50)
        axis.set_xlim(left=0)
        axis.set_xlabel("lambda (x0side / x0cond: fraction of eps RMS per step)")
        axis.set_ylabel(f"AMS {band} (%)")
    save_figure(figure, axes, path)


def save_figure(figure, axes, path: Path) -> None:
    """Grid both panels, put the legend on the first, write ``path`` and free the figure."""
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="JSON-lines files written by side_study.py")
    parser.add_argument("--output", required=True, help="output path without suffix")
    args = parser.parse_args()
    rows = load(args.inputs)
    label_runs(rows)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compact = [{k: v for k, v in row.items() if k not in NOT_STORED} for row in rows]
    output.with_suffix(".json").write_text(json.dumps(compact, indent=1) + "\n")
    print(table(rows))
    seeds = sorted({row["seed"] for row in rows})
    report = [row for row in rows if row["seed"] == max(seeds)]
    plot_distinct(report, output.with_name(output.name + "-distinct.png"))
    selection = [row for row in rows if row["seed"] == min(seeds)]
    plot_lambda(selection, output.with_name(output.name + "-lambda.png"))


if __name__ == "__main__":
    main()
