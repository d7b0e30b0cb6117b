"""How `side demo` chooses SIDE's guidance scale lambda from a sweep on the selection seed.

Two criteria (`SWEEP_CRITERIA`, ``side demo --sweep-criterion``):

- ``"blind-groups"`` (the default, attacker-side): SIDE is sampled at every lambda on the selection seed, each set of
  generations is ranked into its blind candidate list (`diffusers_side.candidates.ranking`: near-duplicate groups among
  the generations, no training image read), and lambda is the one with the most blind near-duplicate groups (blind
  candidates whose group holds >= 2 generations) per generation; ties go to the smaller lambda. This is the project's
  attacker-side selection rule (the one `side study` is read with): memorized images recur across seeds (Carlini et
  al. 2023), so a lambda under which generations nearly duplicate each other more often is one that copies more.
  **Collapse guard**: only lambdas up to the one where the labeller puts the most generations in their target cluster
  (`diffusers_side.labels.agreement`, a judge other than the classifier that steered) are eligible. Past that peak the
  steering classifier is being fooled, and generations pulled to one point copy each other whether or not it is a
  training image, so the group count keeps rising while fewer training images come out (without the guard the
  paper-preset sweep chose lambda 50; docs/attacker-study.md).
- ``"auditor-tuned"``: each lambda's generations are scored against the training set (`run_sweep` with
  ``--reference``) and lambda is the one with the most generations in the two most similar bands. An attacker has no
  training set, so this is an oracle step; the report labels it as such.

Example:

```py
>>> from diffusers_side.workflows.demo_sweep import select_by_blind_groups
>>> select_by_blind_groups({"0": {"num_generations": 100, "num_groups": 3}, "5": {"num_generations": 100, "num_groups": 7}})
5.0
```
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from diffusers.utils import logging

from ..candidates.files import write_candidates
from ..candidates.ranking import MIN_GENERATIONS
from ..evaluation.bands import Band, display_order
from ..generation.engine import GenerationSettings, generate
from ..generation.preflight import check_generation
from ..labels.agreement import labeller_extractor, target_agreement
from ..labels.surrogate_labels import SurrogateLabels
from ..pipelines.loading import load_pipeline
from ..storage.candidate_files import CANDIDATES_JSON
from ..utils.arg_types import SWEEP_CRITERIA
from ..utils.atomic_io import write_json_atomic
from ..utils.state_files import CANDIDATES_SUMMARY, SWEEP_CONFIG, SWEEP_RESULTS
from .runs import SWEEP_JSON, _with_scale, check_scale_names, check_sweep_folder, run_sweep

logger = logging.get_logger(__name__)

BLIND, AUDITOR = SWEEP_CRITERIA
CRITERION_RULES = {
    BLIND: (
        "attacker-side: the most blind near-duplicate groups (blind candidates whose group holds >= 2 generations, "
        "ranked among the generations alone; no training image read) per generation, among the lambdas up to the one "
        "where the labeller puts the most generations in their target cluster (collapse guard); ties go to the smaller "
        "lambda"
    ),
    AUDITOR: (
        "auditor-tuned (an oracle step an attacker cannot take: scored against the training set): the largest fraction "
        "of generations whose best training match lies in the two most similar bands (AMS mid + high for the default "
        "bands); ties go to the smaller lambda"
    ),
}
SWEEP_DIRS = {BLIND: "sweep-side-blind", AUDITOR: "sweep-side"}
BLIND_SWEEP_JSON = "blind_sweep.json"


def check_sweep_criterion(criterion: str) -> None:
    """Raise `ValueError` naming ``criterion`` and the known ones."""
    if criterion not in SWEEP_CRITERIA:
        raise ValueError(f"sweep_criterion {criterion!r} is not one of {SWEEP_CRITERIA}; pass --sweep-criterion blind-groups "
                         "(attacker-side, the default) or auditor-tuned (scored against the training set).")


def run_blind_sweep(
    base: GenerationSettings, guidance_scales: Sequence[float], output_dir: str | os.PathLike,
    labels: str | os.PathLike | None = None,
) -> dict:
    """Generate with ``base`` at every lambda (same seeds) and rank each set into its blind candidate list.

    No reference is taken or read: the only inputs are the target (with its classifier), its surrogate labels and the
    generations.

    Args:
        base ([`GenerationSettings`]): the settings shared by every lambda (its ``guidance_scale`` is replaced).
        guidance_scales: the lambdas.
        output_dir: gets ``scale-L/`` (generations with ``candidates.json``) per lambda and ``blind_sweep.json``.
        labels: the `side label` output the classifier was trained on; with it each lambda also gets the labeller's
            ``in_cluster_rate`` (`diffusers_side.labels.agreement.target_agreement`), the collapse guard of
            [`select_by_blind_groups`].

    Returns:
        `dict`: lambda (``f"{L:g}"``) -> ``num_generations``, ``num_groups`` (candidates whose group holds >= 2
        generations), ``groups_per_generation`` and, with ``labels``, ``hit_rate`` and ``in_cluster_rate``.
    """
    output_dir = Path(output_dir)
    check_scale_names(guidance_scales)
    settings_per_scale = {scale: _with_scale(base, scale) for scale in guidance_scales}
    for settings in settings_per_scale.values():
        settings.validate()
    if base.num_images < MIN_GENERATIONS:
        raise ValueError(f"selection_num_images={base.num_images}: a blind candidate list needs at least {MIN_GENERATIONS} "
                         "generations per lambda; pass more.")
    check_generation(base)
    config = {"guidance_scales": list(guidance_scales), "criterion": BLIND,
              **{k: v for k, v in asdict(base).items() if k != "guidance_scale"}}
    check_sweep_folder(output_dir, config)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / SWEEP_CONFIG.name, config)
    pipe = load_pipeline(base.pipeline, base.scheduler, base.classifier)
    judge = labeller_extractor(SurrogateLabels.load(labels), base.pipeline) if labels is not None else None
    counts = {}
    for scale, settings in settings_per_scale.items():
        folder = output_dir / f"scale-{scale:g}"
        generate(pipe, folder, settings)
        summary_file = folder / CANDIDATES_JSON
        summary = CANDIDATES_SUMMARY.read(summary_file) if summary_file.is_file() else write_candidates(folder)
        row = counts[f"{scale:g}"] = {
            "num_generations": summary["num_generations"], "num_groups": summary["num_groups"],
            "groups_per_generation": summary["num_groups"] / summary["num_generations"],
        }
        if labels is not None:
            agreement = target_agreement(folder, labels, base.pipeline, extractor=judge)
            row.update(hit_rate=agreement["hit_rate"], in_cluster_rate=agreement["in_cluster_rate"])
        logger.info(f"lambda {scale:g}: {summary['num_groups']} blind groups in {summary['num_generations']} generations"
                    + (f", {row['in_cluster_rate']:.1%} in their target cluster." if labels is not None else "."))
    write_json_atomic(output_dir / BLIND_SWEEP_JSON, counts)
    return counts


def guard_limit(counts: dict[str, dict]) -> float | None:
    """The collapse guard: the lambda where the labeller puts the most generations in their target cluster (ties to
    the smaller), or ``None`` when the sweep has no ``in_cluster_rate`` (run without labels, or before the guard)."""
    if not counts or any("in_cluster_rate" not in row for row in counts.values()):
        return None
    return float(max(counts, key=lambda scale: (counts[scale]["in_cluster_rate"], -float(scale))))


def select_by_blind_groups(counts: dict[str, dict]) -> float:
    """The lambda with the most blind near-duplicate groups per generation, among those up to [`guard_limit`]; ties go
    to the smaller lambda.

    Args:
        counts: lambda (as written in ``blind_sweep.json``) -> ``num_groups``, ``num_generations`` and, for the
            guard, ``in_cluster_rate``.

    Returns:
        `float`: the chosen lambda.
    """
    limit = guard_limit(counts)
    eligible = [scale for scale in counts if limit is None or float(scale) <= limit]

    def score(scale: str) -> float:
        return counts[scale]["num_groups"] / counts[scale]["num_generations"]

    return float(max(eligible, key=lambda scale: (score(scale), -float(scale))))


def select_guidance_scale(results_by_scale: dict[str, dict], method: str = "side") -> float:
    """Auditor-tuned: the lambda whose generations land most often in the two most similar bands.

    Args:
        results_by_scale: lambda (as written in ``sweep.json``) -> the `evaluate` report of ``method`` at that lambda.
        method (`str`): the swept method.

    Returns:
        `float`: the chosen lambda; ties go to the smaller one.
    """

    def score(scale: str) -> float:
        report = results_by_scale[scale]
        bands = display_order([Band(**band) for band in report["bands"]], report["similarity"]["kind"])
        return sum(report["methods"][method]["ams"][band.name] for band in bands[-2:])

    return float(max(results_by_scale, key=lambda scale: (score(scale), -float(scale))))


def sweep_is_done(criterion: str, output_dir: str | os.PathLike) -> bool:
    """Whether the sweep of ``criterion`` has written its results into ``output_dir``."""
    path = Path(output_dir) / (BLIND_SWEEP_JSON if criterion == BLIND else SWEEP_JSON)
    if criterion == BLIND and path.is_file():  # a blind sweep written before the collapse guard is completed (cheaply:
        return guard_limit(json.loads(path.read_text())) is not None  # its images and candidate lists are reused)
    return path.is_file()


def run_demo_sweep(
    criterion: str, base: GenerationSettings, guidance_scales: Sequence[float], output_dir: str | os.PathLike, reference: str,
    labels: str | os.PathLike | None = None,
) -> None:
    """Run the sweep ``criterion`` needs: blind (``reference`` is not touched; ``labels`` for the collapse guard) or
    auditor-tuned (`run_sweep`)."""
    check_sweep_criterion(criterion)
    if criterion == BLIND:
        run_blind_sweep(base, guidance_scales, output_dir, labels)
    else:
        run_sweep(base, guidance_scales, output_dir, reference, similarity="carlini")


def guidance_selection(criterion: str, output_dir: str | os.PathLike, method: str, selection_seed: int, num_images: int) -> dict:
    """The sweep's curve, the chosen lambda and the criterion that chose it (``report.json``'s ``guidance_selection``).

    Args:
        criterion (`str`): a `SWEEP_CRITERIA` entry.
        output_dir: the sweep's folder.
        method (`str`), selection_seed (`int`), num_images (`int`): what was swept, on which seed, how many images.

    Returns:
        `dict`: ``criterion``, ``rule`` (in words), ``reads_training_set``, the per-lambda ``blind_groups`` (blind) or
        ``ams`` (auditor-tuned), and ``selected``.
    """
    check_sweep_criterion(criterion)
    selection = {
        "method": method, "selection_seed": selection_seed, "num_images": num_images, "criterion": criterion,
        "rule": CRITERION_RULES[criterion], "reads_training_set": criterion == AUDITOR,
    }
    if criterion == BLIND:
        counts = json.loads((Path(output_dir) / BLIND_SWEEP_JSON).read_text())
        return {**selection, "blind_groups": counts, "guard_limit": guard_limit(counts),
                "selected": select_by_blind_groups(counts)}
    results = SWEEP_RESULTS.read(Path(output_dir) / SWEEP_JSON)
    ams = {scale: report["methods"][method]["ams"] for scale, report in results.items()}
    return {**selection, "ams": ams, "selected": select_guidance_scale(results, method)}
