"""Benchmark: a real `side demo --preset paper` run, stage by stage, and guided vs plain sampling with its classifier.

Reads a finished (or partly finished) demo folder and writes, in one JSON:

1. **Stages as measured** (``timings.json``: wall seconds and process CPU seconds per stage), with the work each stage
   did (images generated, optimisation steps taken) and its CPU milliseconds per unit; beside each, what
   ``results/full_scale.json`` (`bench_full_scale.py`, the extrapolation from slices) predicted for it.
2. **Guided / plain CPU time per image** with the run's own classifier (``classifier-side``, the size the preset
   chose), timed in alternating rounds (`bench_common.time_interleaved`): `SIDEPipeline` at the swept lambda with
   fixed targets against lambda 0, the demo's shapes (ancestral DDPM, shards of ``--batch`` images). Guidance 0 is
   checked bit-identical to `DDPMPipeline` in the same run. The same ratio from the run itself (``extract side`` vs
   ``extract uncond`` CPU seconds per image, 5,000 images each) is recorded beside it.
3. **The ResNet-34 branch** (``--classifier-size paper``), projected: the stages that do not depend on the classifier
   as measured here, the ones that do (two classifier trainings, the guided part of the sweep, SIDE and Cond
   extraction) from the per-unit CPU seconds of a `bench_full_scale.py --classifier-size paper` result
   (``--resnet34``); one core, and two cores with the classifier-independent half split perfectly (an optimistic
   bound: torch's two threads give less than 2x on these small convolutions).

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/bench_full_scale.py --pipeline digits-rare --classifier-size paper \\
        --output benchmarks/results/full_scale_resnet34_digits_rare.json
    OMP_NUM_THREADS=1 python benchmarks/bench_paper_preset.py RUN_FOLDER \\
        --resnet34 benchmarks/results/full_scale_resnet34_digits_rare.json        # results/paper_preset.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from bench_common import RESULTS_DIR, machine_info, machine_line, markdown_table, time_interleaved, write_results
from diffusers import DDPMPipeline

from diffusers_side.pipelines.loading import load_pipeline

GUIDED_ROW, PLAIN_ROW = "extract side (report + sweep lambda > 0)", "extract plain (uncond + sweep lambda 0)"
# demo stage -> the bench_full_scale rows whose CPU per unit predicts it (the sweep: its lambda 0 part and the rest)
FULL_SCALE_ROWS = {
    "synthesize": ("synthesize",),
    "label": ("label features", "label kmeans"),
    "train classifier-side": ("train classifier-side",),
    "train classifier-cond": ("train classifier-cond",),
    "sweep side": (PLAIN_ROW, GUIDED_ROW),
    "extract side": (GUIDED_ROW,),
    "extract uncond": (PLAIN_ROW,),
    "extract cond": ("extract cond",),
    "extract side-exemplar": ("extract side-exemplar",),
}
CLASSIFIER_STAGES = ("train classifier-side", "train classifier-cond", "sweep side", "extract side", "extract cond")


def stage_units(run: Path, config: dict) -> dict[str, tuple[int, str]]:
    """The work of each demo stage: (count, unit)."""
    units = {"synthesize": (config["num_synthetic"], "image"), "label": (config["num_synthetic"], "image")}
    for name in ("classifier-side", "classifier-cond"):
        log = run / name / "train_log.json"
        if log.is_file():
            units[f"train {name}"] = (json.loads(log.read_text())["global_step"], "step")
    scales = config["sweep_guidance_scales"]
    units["sweep side"] = (len(scales) * config["selection_num_images"], "image")
    for method in ("uncond", "side", "cond", "side-exemplar"):
        units[f"extract {method}"] = (config["num_images"], "image")
    return units


def predicted_cpu_s(extrapolation: dict, name: str, units: int, config: dict) -> float | None:
    """CPU seconds a `bench_full_scale.py` result predicts for the demo stage ``name`` doing ``units`` of work."""
    if name not in FULL_SCALE_ROWS:
        return None
    full_s = {row: 60 * extrapolation["extrapolated_cpu_min"][row] for row in extrapolation["extrapolated_cpu_min"]}
    per_unit = {row: full_s[row] / extrapolation["full_sizes"][row] for row in full_s}
    if name == "sweep side":
        plain = sum(1 for scale in config["sweep_guidance_scales"] if scale == 0) * config["selection_num_images"]
        return per_unit[PLAIN_ROW] * plain + per_unit[GUIDED_ROW] * (units - plain)
    if name == "label":  # features per image, KMeans as extrapolated to the full N_syn (a line through two sizes)
        return per_unit["label features"] * units + full_s["label kmeans"]
    return sum(per_unit[row] * units for row in FULL_SCALE_ROWS[name])


def measured_stages(run: Path, extrapolations: dict[str, dict]) -> dict:
    """Section 1: each stage's wall and CPU seconds, its work, its CPU per unit and each extrapolation's CPU seconds."""
    timings = json.loads((run / "timings.json").read_text())
    config = json.loads((run / "demo_config.json").read_text())
    cpu = timings.pop("cpu_seconds", {})
    total_wall = timings.pop("total", None)  # the demo's own sum over the stages of the last process
    units = stage_units(run, config)
    stages = {}
    for name, wall in timings.items():
        count, unit = units.get(name, (None, None))
        entry = {"wall_s": wall, "cpu_s": cpu.get(name), "units": count, "unit": unit, "extrapolated_cpu_s": {}}
        if count and cpu.get(name) is not None:
            entry["cpu_ms_per_unit"] = round(1e3 * cpu[name] / count, 3)
        for label, extrapolation in extrapolations.items():
            predicted = predicted_cpu_s(extrapolation, name, count, config) if count else None
            if predicted is not None:
                entry["extrapolated_cpu_s"][label] = round(predicted, 1)
        stages[name] = entry
    return {"config": config, "stages": stages, "total_wall_s": total_wall or round(sum(timings.values()), 1),
            "total_cpu_s": round(sum(v for v in cpu.values() if v is not None), 1)}


def guided_vs_plain(run: Path, config: dict, guidance_scale: float, batch: int, steps: int, repeats: int) -> dict:
    """Section 2: CPU seconds per image, guided with the run's ``classifier-side`` against plain, interleaved."""
    pipe = load_pipeline(config["pipeline"], config["scheduler"], run / "classifier-side")
    pipe.set_progress_bar_config(disable=True)
    reference = DDPMPipeline(pipe.unet, pipe.scheduler)
    reference.set_progress_bar_config(disable=True)
    num_labels = pipe.classifier.config.num_classes
    targets = [i % num_labels for i in range(batch)]

    def run_pipe(scale):
        return pipe(batch_size=batch, target=targets if scale else None, guidance_scale=scale, num_inference_steps=steps,
                    generator=torch.Generator().manual_seed(0), output_type="np").images

    plain = run_pipe(0.0)
    ddpm = reference(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np").images
    times = time_interleaved({"plain": lambda: run_pipe(0.0), "guided": lambda: run_pipe(guidance_scale)}, repeats=repeats, warmup=1)
    per_image = {key: value["cpu"]["min_s"] / batch for key, value in times.items()}
    classifier = pipe.classifier.config
    return {
        "classifier": {"layers": classifier.layers, "base_channels": classifier.base_channels,
                       "parameters": sum(p.numel() for p in pipe.classifier.parameters())},
        "guidance_scale": guidance_scale, "batch": batch, "steps": steps, "repeats": repeats,
        "guidance_0_equals_DDPMPipeline": bool(np.array_equal(plain, ddpm)),
        "cpu_s_per_image_per_step": {k: v / steps for k, v in per_image.items()},
        "cpu_s_per_image_50_steps": {k: v * 50 / steps for k, v in per_image.items()},
        "ratio": per_image["guided"] / per_image["plain"], "raw": times,
    }


def resnet34_branch(stages: dict, label: str) -> dict:
    """Section 3: the run with the paper's ResNet-34: its classifier stages as extrapolation ``label`` predicts them, the
    rest as measured."""
    rows = {}
    for name, entry in stages.items():
        if name in CLASSIFIER_STAGES:
            rows[name] = {"cpu_s": entry["extrapolated_cpu_s"][label], "source": f"extrapolated ({label})"}
        else:
            rows[name] = {"cpu_s": entry["cpu_s"], "source": "measured in the run"}
    classifier_s = sum(rows[name]["cpu_s"] for name in rows if name.startswith("train"))
    total_s = sum(row["cpu_s"] for row in rows.values())
    # classifiers on one thread one after the other (the demo trains with --torch_threads 1); the rest split over 2 cores
    return {"stages": rows, "cpu_hours_1_core": round(total_s / 3600, 2),
            "hours_2_cores_optimistic": round((classifier_s + (total_s - classifier_s) / 2) / 3600, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a `side demo --preset paper` output folder (with timings.json)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--batch", type=int, default=None, help="images per timed call (default: the run's batch size)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps per timed call (the cost per step is constant)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extrapolation", action="append", default=[], metavar="LABEL=JSON",
                        help="a bench_full_scale.py result to compare with (repeatable); default: before=results/full_scale.json")
    parser.add_argument("--resnet34", default=None, metavar="LABEL", help="the --extrapolation (a --classifier-size paper "
                        "result) whose classifier stages project the ResNet-34 branch (section 3)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    run = Path(args.run)
    info = machine_info()
    pairs = [item.split("=", 1) for item in args.extrapolation] or [["before", str(RESULTS_DIR / "full_scale.json")]]
    extrapolations = {label: json.loads(Path(path).read_text()) for label, path in pairs if os.path.isfile(path)}
    if args.resnet34 is not None and args.resnet34 not in extrapolations:
        raise ValueError(f"--resnet34 {args.resnet34!r} names no --extrapolation; pass one of {sorted(extrapolations)}.")
    results = {"machine": info, "run": str(run), **measured_stages(run, extrapolations),
               "extrapolations": {label: {"path": path, "machine": extrapolations[label]["machine"],
                                          "classifier_size": extrapolations[label].get("classifier_size", "paper")}
                                  for label, path in pairs if label in extrapolations}}
    report = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
    scale = report.get("guidance_selection", {}).get("selected") or 1.0
    batch = args.batch or results["config"]["batch_size"]
    steps, repeats = (2, 1) if args.quick else (args.steps, args.repeats)
    results["guided_vs_plain"] = guided_vs_plain(run, results["config"], scale, batch, steps, repeats)
    stages = results["stages"]
    if "extract side" in stages and "extract uncond" in stages:
        results["guided_vs_plain"]["ratio_in_the_run"] = stages["extract side"]["cpu_s"] / stages["extract uncond"]["cpu_s"]
    if args.resnet34:
        results["resnet34_branch"] = resnet34_branch(stages, args.resnet34)
    results["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)

    print(machine_line(info))
    labels = list(extrapolations)
    rows = [[name, e["units"], f"{e['wall_s'] / 60:.1f}", f"{(e['cpu_s'] or 0) / 60:.1f}",
             *(f"{e['extrapolated_cpu_s'][k] / 60:.1f}" if k in e["extrapolated_cpu_s"] else "" for k in labels)]
            for name, e in stages.items()]
    print(markdown_table(["stage", "units", "wall min", "CPU min", *(f"{k}: extrapolated CPU min" for k in labels)], rows))
    ratio = results["guided_vs_plain"]
    print(f"guided / plain per image (interleaved, batch {batch}): {ratio['ratio']:.3f}; in the run: "
          f"{ratio.get('ratio_in_the_run', math.nan):.3f}; guidance 0 == DDPMPipeline: {ratio['guidance_0_equals_DDPMPipeline']}")
    if "resnet34_branch" in results:
        branch = results["resnet34_branch"]
        print(f"ResNet-34 branch: {branch['cpu_hours_1_core']} CPU h, {branch['hours_2_cores_optimistic']} h on 2 cores (optimistic)")
    print(f"written to {write_results('paper_preset_quick' if args.quick else 'paper_preset', results, args.output)}")


if __name__ == "__main__":
    main()
