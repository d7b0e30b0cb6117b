"""What each stage of an audit costs, kept across resumes: CPU and wall seconds, and UNet evaluations.

An honest comparison charges SIDE for everything it runs before its guided samples (synthesis, labelling,
classifier training) and gives plain sampling the same budget. [`CostLedger`] records, per stage:

- ``cpu_seconds``: `time.process_time` of this process (every thread), the budget unit least disturbed by other
  jobs on a shared machine; ``wall_seconds``: `time.perf_counter`.
- a stage resumed part-way (a generation whose first shards were already written) is measured on the part it ran
  and scaled to the whole stage (``measured_fraction``); a stage already complete keeps its earlier record.
- ``unet_evaluations``: exact forward passes of the target's UNet (`unet_evaluations`), and ``unet_backward``
  passes for guidance through the UNet (x0 guidance), counted from the settings, not measured.

`budget` sums a method's stages and converts seconds to UNet-evaluation equivalents with the CPU seconds of one
UNet evaluation measured on plain sampling in the same run (synthesis, or an unguided stage when nothing was
synthesized).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

from ..utils.atomic_io import write_json_atomic

COSTS_FILE = "costs.json"
LABEL_STAGE = "label"
SYNTHESIS_STAGE = "synthesize"


class CostLedger:
    """Per-stage costs of one study, in ``costs.json`` (resumable: a complete stage keeps its record)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def measure(self, name: str, run: Callable[[], object], done_before: float = 0.0, **counts) -> dict | None:
        """Run one stage and record its cost.

        Args:
            name (`str`): the stage (e.g. ``"synthesize"``, ``"train classifier-side"``, ``"extract report/side"``).
            run (`Callable`): runs (or resumes) the stage.
            done_before (`float`): the fraction of the stage already finished before ``run`` (0: it runs whole; 1:
                nothing left, the earlier record stays).
            counts: exact counts to store with it (``unet_evaluations``, ``unet_backward``, ``images``).

        Returns:
            `dict`: the stage's record (``None`` when it was complete before and never recorded).
        """
        left = 1.0 - done_before
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if left <= 0:
            return self.records.get(name)
        self.records[name] = {
            "cpu_seconds": round(cpu / left, 3), "wall_seconds": round(wall / left, 3), "measured_fraction": round(left, 4),
            **counts,
        }
        write_json_atomic(self.path, self.records)
        return self.records[name]

    def seconds_per_unet_evaluation(self, stage: str = SYNTHESIS_STAGE) -> float:
        """CPU seconds of one UNet evaluation in plain sampling, from ``stage`` (by default the synthesis stage).

        Raises:
            `ValueError`: ``stage`` was not recorded (run the study's inputs first).
        """
        record = self.records.get(stage)
        if not record or not record.get("unet_evaluations"):
            raise ValueError(f"{self.path} has no record of the {stage!r} stage: the UNet's cost is measured on it.")
        return record["cpu_seconds"] / record["unet_evaluations"]


def unet_evaluations(num_images: int, num_inference_steps: int, guidance_space: str = "xt", guided: bool = False) -> dict:
    """Exact UNet passes of a generation run: one forward per image and step, one backward more with x0 guidance."""
    forward = num_images * num_inference_steps
    return {"unet_evaluations": forward, "unet_backward": forward if guided and guidance_space == "x0" else 0, "images": num_images}


def budget(ledger: CostLedger, stages: list[str], plain_steps: int, reference: str = SYNTHESIS_STAGE) -> dict:
    """A method's total cost over ``stages`` and the plain-sampling generations it buys.

    Args:
        ledger ([`CostLedger`]): the recorded stages.
        stages: the stages the method ran (its inputs, then its own sampling).
        plain_steps (`int`): denoising steps of one plain-sampling generation.
        reference (`str`): the unguided stage the CPU seconds of one UNet evaluation are measured on.

    Returns:
        `dict`: ``cpu_seconds``, ``wall_seconds``, ``unet_evaluations`` (+ ``unet_backward``, each counted as two
        forward passes in ``unet_evaluation_total``), ``unet_equivalents`` (CPU seconds / seconds per UNet
        evaluation), per-stage records, and ``plain_images``: the larger of ``unet_equivalents / plain_steps`` and
        ``unet_evaluation_total / plain_steps`` (rounded down), the budget the comparison gives plain sampling.
    """
    missing = [stage for stage in stages if stage not in ledger.records]
    if missing:
        raise ValueError(f"{ledger.path} has no cost record of {missing}; run those stages within the study.")
    records = {stage: ledger.records[stage] for stage in stages}
    per_evaluation = ledger.seconds_per_unet_evaluation(reference)
    cpu = sum(r["cpu_seconds"] for r in records.values())
    forward = sum(r.get("unet_evaluations", 0) for r in records.values())
    backward = sum(r.get("unet_backward", 0) for r in records.values())
    equivalents = cpu / per_evaluation
    return {
        "stages": records,
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(sum(r["wall_seconds"] for r in records.values()), 3),
        "unet_evaluations": forward,
        "unet_backward": backward,
        "unet_evaluation_total": forward + 2 * backward,
        "cpu_seconds_per_unet_evaluation": per_evaluation,
        "unet_equivalents": round(equivalents, 1),
        "plain_images": int(max(math.floor(equivalents / plain_steps), (forward + 2 * backward) // plain_steps)),
    }
