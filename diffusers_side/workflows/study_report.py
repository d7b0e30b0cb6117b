"""The results of a study phase: every configuration at equal N_G and at equal budget, with 95 % intervals.

Reads each configuration's evaluation (``matches.parquet``: every generation's best training match and band) and
computes, on the first ``n`` generations (a prefix of a run is exactly the smaller run):

- AMS per band with its Wilson interval; UMS per band (distinct training images / n) with its bootstrap interval,
  and the same as counts (``distinct``: count, low, high);
- at equal budget, for each charged configuration (guided, or plain sampling with a restart): the baseline
  plain-sampling configurations on their first ``plain_images`` generations, the number its whole cost buys
  (`diffusers_side.workflows.costs.budget`), and, when its budget paid for synthesis, the configuration *with its
  synthetic set*: the distinct training images among its generations and the N_syn plain generations it holds too
  (``with_synthetic``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet

from ..evaluation.bands import Band, display_order
from ..evaluation.candidates import counted_bands
from ..evaluation.evaluate import MATCHES_FILE
from ..evaluation.intervals import distinct_interval, pooled_distinct_interval, wilson_interval
from .costs import SYNTHESIS_STAGE

STUDY_JSON = "study.json"
STUDY_MD = "study.md"
INTERVALS = (
    "95 % intervals: AMS, Wilson score interval; UMS and distinct counts, the estimate +- 1.96 bootstrap standard errors "
    "(generations resampled with replacement)."
)
BUDGET_CONVERSION = (
    "Budget: CPU seconds (process time) of every stage a configuration needs (synthesis, labelling, classifier training, "
    "its own sampling). UNet-evaluation equivalents = CPU seconds / the CPU seconds of one UNet evaluation in plain "
    "sampling (measured on the synthesis stage of the same study). Plain sampling at equal budget gets the larger of "
    "(UNet equivalents, exact UNet passes with a backward pass counted as two) / denoising steps generations. (Without "
    "a synthesis stage, one UNet evaluation is measured on the unguided restarted run.)"
)

WITH_SYNTHETIC = (
    "\"+ its synthetic set\": the configuration's generations together with the synthetic set (plain sampling at the "
    "synthesis seeds) that its budget already paid for and the attacker holds; distinct images of the union, each "
    "set resampled on its own for the interval."
)


def read_matches(evaluation_dir: Path) -> dict[str, np.ndarray]:
    """A single-folder evaluation's per-generation best match and band, in image-index order."""
    table = pyarrow.parquet.read_table(Path(evaluation_dir) / MATCHES_FILE, columns=["index", "best_match", "band"]).to_pydict()
    order = np.argsort(np.asarray(table["index"]), kind="stable")
    return {name: np.asarray(values)[order] for name, values in table.items()}


def metrics_at(matches: dict[str, np.ndarray], bands: list[Band], n: int, resamples: int, seed: int) -> dict:
    """AMS, UMS and distinct counts (each with its interval) on the first ``n`` generations."""
    n = min(n, len(matches["band"]))
    band, best = matches["band"][:n], matches["best_match"][:n]
    result = {"num_images": n, "ams": {}, "ums": {}, "distinct": {}}
    for b in bands:
        in_band = band == b.name
        result["ams"][b.name] = wilson_interval(int(in_band.sum()), n)
        result["ums"][b.name] = distinct_interval(in_band, best, resamples, seed)
        result["distinct"][b.name] = [round(v * n, 2) for v in result["ums"][b.name]]
    return result


def union_metrics(parts: list[dict[str, np.ndarray]], bands: list[Band], resamples: int, seed: int) -> dict:
    """Distinct training images per band among several generation sets held together (`pooled_distinct_interval`)."""
    total = sum(len(p["band"]) for p in parts)
    result = {"num_images": total, "ums": {}, "distinct": {}}
    for b in bands:
        result["ums"][b.name] = pooled_distinct_interval([(p["band"] == b.name, p["best_match"]) for p in parts], resamples, seed)
        result["distinct"][b.name] = [round(v * total, 2) for v in result["ums"][b.name]]
    return result


def _prefix(matches: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {name: values[:n] for name, values in matches.items()}


def tabulate(
    config, phase: str, runs: dict[str, dict], budgets: dict[str, dict], phase_dir: Path, synthetic: Path | None = None,
) -> dict:
    """The phase's results: one row per configuration, equal-N_G metrics, budgets and equal-budget comparisons.

    Args:
        config (`StudyConfig`): the study.
        phase (`str`): the phase.
        runs: configuration name -> ``configuration``, ``folder``, ``settings``, ``command`` and ``evaluation`` (the report).
        budgets: charged configuration name -> its `diffusers_side.workflows.costs.budget`.
        phase_dir: the phase folder (evaluations in ``NAME-eval``).
        synthetic: the synthetic set's evaluation folder; given, each guided configuration is also counted together
            with the synthetic set at equal budget (``with_synthetic``).
    """
    first = next(iter(runs.values()))["evaluation"]
    bands = [Band(**b) for b in first["bands"]]
    kind = first["similarity"]["kind"]
    n = config.phase(phase).num_images
    resamples, seed = config.bootstrap_resamples, config.bootstrap_seed
    matches = {name: read_matches(phase_dir / f"{name}-eval") for name in runs}
    plain = [name for name in runs if name not in budgets]
    synthetic_matches = read_matches(synthetic) if synthetic is not None else None
    rows = {}
    for name, run in runs.items():
        row = {
            "method": run["settings"]["method"], "configuration": run["configuration"], "command": run["command"],
            "folder": run["folder"], "num_generated": len(matches[name]["band"]), **metrics_at(matches[name], bands, n, resamples, seed),
            "candidates": run["evaluation"].get("candidates", {}).get(run["folder"]),
        }
        if name in budgets:
            row["budget"] = budgets[name]
            images = budgets[name]["plain_images"]
            row["equal_budget"] = {other: metrics_at(matches[other], bands, images, resamples, seed) for other in plain}
            if synthetic_matches is not None and SYNTHESIS_STAGE in budgets[name]["stages"]:
                row["with_synthetic"] = union_metrics([_prefix(matches[name], n), synthetic_matches], bands, resamples, seed)
        rows[name] = row
    return {
        "phase": phase, "seed": config.phase(phase).seed, "num_images": n, "pipeline": config.pipeline,
        "reference": config.reference, "similarity": first["similarity"]["name"], "bands": first["bands"],
        "counted_bands": [b.name for b in counted_bands(bands, kind)], "display_order": [b.name for b in display_order(bands, kind)],
        "intervals": INTERVALS, "budget_conversion": BUDGET_CONVERSION, "configurations": rows,
    }


def _cell(interval: list[float], percent: bool = True) -> str:
    scale, digits = (100, 2) if percent else (1, 0)
    value, low, high = (scale * v for v in interval)
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _precision(row: dict, k: str = "50") -> str:
    candidates = row.get("candidates")
    if not candidates or k not in candidates["at"]:
        return "-"
    at = candidates["at"][k]
    return f"{100 * at['precision']:.0f} ({at['distinct']})"


def render_study(results: dict) -> str:
    """``study.md``: the equal-N_G table, the equal-budget table, and the command behind every row."""
    bands = list(results["counted_bands"])  # least similar first, as the paper's tables
    header = ["configuration", "method", "N_G"] + [f"AMS {b} (%)" for b in bands] + [f"distinct {b}" for b in bands]
    header += ["P@50 (distinct)", "CPU s", "UNet-eq"]
    lines = [
        f"# Study, {results['phase']} phase (run seed {results['seed']}, N_G {results['num_images']})", "",
        f"Target `{results['pipeline']}`, reference `{results['reference']}`, similarity `{results['similarity']}`, default "
        f"bands. {INTERVALS} P@50: precision of the blind candidate list's top 50 (over all of the folder's generations) "
        f"in the {' + '.join(results['counted_bands'])} bands, with the distinct training images they copy.", "",
        "## At equal N_G", "", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
    ]
    for name, row in results["configurations"].items():
        cost = row.get("budget")
        cells = [name, row["method"], str(row["num_images"])] + [_cell(row["ams"][b]) for b in bands]
        cells += [_cell(row["distinct"][b], percent=False) for b in bands] + [_precision(row)]
        cells += [f"{cost['cpu_seconds']:.0f}", f"{cost['unet_equivalents']:.0f}"] if cost else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## At equal budget", "", BUDGET_CONVERSION + " " + WITH_SYNTHETIC, ""]
    for name, row in results["configurations"].items():
        if "budget" not in row:
            continue
        cost = row["budget"]
        lines += [
            f"**{name}** spent {cost['cpu_seconds']:.0f} CPU s ({cost['unet_evaluations']} UNet passes + {cost['unet_backward']} "
            f"backward, {cost['unet_equivalents']:.0f} UNet-evaluation equivalents): plain sampling gets {cost['plain_images']} "
            "generations.", "",
            "| run | N | " + " | ".join(f"distinct {b}" for b in bands) + " |", "|---|---:|" + "---:|" * len(bands),
            f"| {name} | {row['num_images']} | " + " | ".join(_cell(row["distinct"][b], percent=False) for b in bands) + " |",
        ]
        if "with_synthetic" in row:
            union = row["with_synthetic"]
            cells = " | ".join(_cell(union["distinct"][b], percent=False) for b in bands)
            lines.append(f"| {name} + its synthetic set | {union['num_images']} | {cells} |")
        for other, metrics in row["equal_budget"].items():
            cells = " | ".join(_cell(metrics["distinct"][b], percent=False) for b in bands)
            lines.append(f"| {other} | {metrics['num_images']} | {cells} |")
        lines.append("")
    lines += ["## Commands", "", "Each folder is regenerated, image for image, by:", ""]
    lines += [f"- {name}: `{row['command']}`" for name, row in results["configurations"].items()]
    return "\n".join(lines) + "\n"
