"""How `side demo` chooses SIDE's guidance scale lambda from a sweep on the selection seed.

Two criteria (`SWEEP_CRITERIA`, ``side demo --sweep-criterion``):

- ``"blind-groups"`` (the default, attacker-side): SIDE is sampled at every lambda on the selection seed, each set of
  generations is ranked into its blind candidate list (`diffusers_side.candidates.ranking`: near-duplicate groups among
  the generations, no training image read), and lambda is the one with the most blind near-duplicate groups (blind
  candidates whose group holds >= 2 generations) per generation; ties go to the smaller lambda. This is the project's
  attacker-side selection rule (the one `side study` is read with): memorized images recur across seeds (Carlini et
  al. 2023), so a lambda under which generations nearly duplicate each other more often is one that copies more.
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
        "ranked among the generations alone; no training image read) per generation; ties go to the smaller lambda"
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


def run_blind_sweep(base: GenerationSettings, guidance_scales: Sequence[float], output_dir: str | os.PathLike) -> dict:
    """Generate with ``base`` at every lambda (same seeds) and rank each set into its blind candidate list.

    No reference is taken or read: the only inputs are the target (with its classifier) and the generations.

    Args:
        base ([`GenerationSettings`]): the settings shared by every lambda (its ``guidance_scale`` is replaced).
        guidance_scales: the lambdas.
        output_dir: gets ``scale-L/`` (generations with ``candidates.json``) per lambda and ``blind_sweep.json``.

    Returns:
        `dict`: lambda (``f"{L:g}"``) -> ``num_generations``, ``num_groups`` (candidates whose group holds >= 2
        generations) and ``groups_per_generation``.
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
    counts = {}
    for scale, settings in settings_per_scale.items():
        folder = output_dir / f"scale-{scale:g}"
        generate(pipe, folder, settings)
        summary_file = folder / CANDIDATES_JSON
        summary = CANDIDATES_SUMMARY.read(summary_file) if summary_file.is_file() else write_candidates(folder)
        counts[f"{scale:g}"] = {
            "num_generations": summary["num_generations"], "num_groups": summary["num_groups"],
            "groups_per_generation": summary["num_groups"] / summary["num_generations"],
        }
        logger.info(f"lambda {scale:g}: {summary['num_groups']} blind groups in {summary['num_generations']} generations.")
    write_json_atomic(output_dir / BLIND_SWEEP_JSON, counts)
    return counts


def select_by_blind_groups(counts: dict[str, dict]) -> float:
    """The lambda with the most blind near-duplicate groups per generation; ties go to the smaller lambda.

    Args:
        counts: lambda (as written in ``blind_sweep.json``) -> ``num_groups`` and ``num_generations``.

    Returns:
        `float`: the chosen lambda.
    """

    def score(scale: str) -> float:
        return counts[scale]["num_groups"] / counts[scale]["num_generations"]

    return float(max(counts, key=lambda scale: (score(scale), -float(scale))))


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
    return (Path(output_dir) / (BLIND_SWEEP_JSON if criterion == BLIND else SWEEP_JSON)).is_file()


def run_demo_sweep(
    criterion: str, base: GenerationSettings, guidance_scales: Sequence[float], output_dir: str | os.PathLike, reference: str
) -> None:
    """Run the sweep ``criterion`` needs: blind (``reference`` is not touched) or auditor-tuned (`run_sweep`)."""
    check_sweep_criterion(criterion)
    if criterion == BLIND:
        run_blind_sweep(base, guidance_scales, output_dir)
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
        return {**selection, "blind_groups": counts, "selected": select_by_blind_groups(counts)}
    results = SWEEP_RESULTS.read(Path(output_dir) / SWEEP_JSON)
    ams = {scale: report["methods"][method]["ams"] for scale, report in results.items()}
    return {**selection, "ams": ams, "selected": select_guidance_scale(results, method)}
