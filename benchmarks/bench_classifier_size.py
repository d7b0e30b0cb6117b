"""Benchmark: does a classifier sized to the target lose anything against the paper's ResNet-34? Accuracy and cost.

Trains each candidate size on one labelled synthetic set (``side label``'s output) with the paper preset's optimiser
(`PAPER`: AdamW lr 1e-4, weight decay 1e-2, batch 64, 20 epochs, the library's held-out tenth, one thread) through
the library's `train_classifier`, and reports per size:

- parameters; training CPU and wall seconds (process CPU time of the in-process run: one thread);
- held-out accuracy on clean images and per timestep quartile (from ``train_log.json``), with 95 % Wilson intervals;
- guided sampling CPU seconds per image (50 steps, extrapolated from ``--steps`` timed steps at ``--batch``, the
  demo's shard), plain sampling's in the same rounds, and their ratio.

Candidates (``--sizes``): ``auto`` (the rule of `diffusers_side.models.classifier_size` for this data), ``demo``
(ResNet-18 width 16), ``paper`` (ResNet-34 width 64) and any ``LAYOUT:WIDTH`` (e.g. ``resnet8:32``). ``--subset N``
trains on the first N labelled images only (the rule then sees N), to check the rule at another data size.

The labelled set is the attacker's own (synthetic samples of the target, surrogate labels): choosing the size on its
held-out images uses no training data of the target. Whether extraction on report seeds changes with the size is a
separate, costlier comparison (`side demo --classifier-size`).

Each size trains into ``--work DIR/<size>`` and is skipped when already there (resumable); timings are kept in
``bench_timing.json`` next to it.

Usage (from the repository root; the labels: ``side demo --preset paper --pipeline digits-rare --reference digits-rare``
stopped after its label stage, or ``side synthesize`` + ``side label``)::

    OMP_NUM_THREADS=1 python benchmarks/bench_classifier_size.py --labels RUN/labels --work /tmp/sizes
    OMP_NUM_THREADS=1 python benchmarks/bench_classifier_size.py --quick      # smoke run on a tiny made-up set
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from bench_common import Stopwatch, machine_info, machine_line, markdown_table, time_interleaved, write_results
from datasets import load_from_disk

from diffusers_side.generation.engine import GenerationSettings, generate
from diffusers_side.labels.surrogate_labels import LABELS_JSON, label_synthetic
from diffusers_side.models.classifier_size import PRESET_SIZES, auto_classifier_size
from diffusers_side.pipelines.loading import load_pipeline
from diffusers_side.pipelines.pipeline_side import SIDEPipeline
from diffusers_side.training.classifier import classifier_training_args, train_classifier
from diffusers_side.workflows.demo import PAPER

TIMING_FILE = "bench_timing.json"
Z = 1.959964  # 95 % normal quantile


def wilson(accuracy: float, count: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion."""
    if count == 0:
        return (0.0, 1.0)
    centre = (accuracy + Z**2 / (2 * count)) / (1 + Z**2 / count)
    half = Z * math.sqrt(accuracy * (1 - accuracy) / count + Z**2 / (4 * count**2)) / (1 + Z**2 / count)
    return (max(0.0, centre - half), min(1.0, centre + half))


def resolve(name: str, num_train: int) -> tuple[dict, str]:
    """Training flags and a description for a candidate name."""
    if name in PRESET_SIZES:
        return {"classifier_size": name}, f"{PRESET_SIZES[name].layers} w{PRESET_SIZES[name].base_channels}"
    if name == "auto":
        size = auto_classifier_size(16, num_train)  # the flag resolves it from the data; shown here for the table
        return {"classifier_size": "auto"}, f"{size.layers} w{size.base_channels} (rule)"
    layers, width = name.split(":")
    return {"classifier_layers": layers, "base_channels": int(width)}, f"{layers} w{width}"


def subset_labels(labels: Path, num_images: int, folder: Path) -> Path:
    """The first ``num_images`` rows of a labelled set, with its sidecar, saved to ``folder`` (once)."""
    if not (folder / LABELS_JSON).exists():
        load_from_disk(str(labels)).select(range(num_images)).save_to_disk(str(folder))
        shutil.copy(labels / LABELS_JSON, folder / LABELS_JSON)
    return folder


def train_size(name: str, labels: Path, work: Path, pipeline: str, config, max_steps: int | None) -> dict:
    """Train one candidate (or reuse a finished run) and return its timing, log and config."""
    output = work / name.replace(":", "-")
    num_train = len(load_from_disk(str(labels))) - max(1, round(0.1 * len(load_from_disk(str(labels)))))
    flags, description = resolve(name, num_train)
    if not (output / "train_log.json").exists():
        length = {"max_train_steps": max_steps} if max_steps else {"num_epochs": config.classifier_epochs}
        args = classifier_training_args(
            pretrained_model_name_or_path=pipeline, train_data_dir=str(labels), output_dir=str(output), **flags, **length,
            train_batch_size=config.classifier_batch_size, learning_rate=config.classifier_learning_rate,
            adam_weight_decay=config.classifier_weight_decay, seed=config.seed, resume_from_checkpoint="latest",
        )
        with Stopwatch() as watch:
            train_classifier(args)
        (output / TIMING_FILE).write_text(json.dumps({"cpu_s": watch.cpu, "wall_s": watch.wall}))
    log = json.loads((output / "train_log.json").read_text())
    classifier_config = json.loads((output / "classifier" / "config.json").read_text())
    return {"output": str(output), "description": description, "num_train": num_train, "global_step": log["global_step"],
            **json.loads((output / TIMING_FILE).read_text()), "evaluation": log["evaluation"],
            "layers": classifier_config["layers"], "base_channels": classifier_config["base_channels"]}


def sampling_costs(pipeline: str, trained: dict, batch: int, steps: int, repeats: int, full_steps: int) -> dict:
    """CPU s per image (over ``full_steps``) of plain and guided sampling with each trained classifier, interleaved."""
    base = load_pipeline(pipeline, "ddpm")
    base.set_progress_bar_config(disable=True)
    pipes = {}
    for name, entry in trained.items():
        pipes[name] = SIDEPipeline(base.unet, base.scheduler, load_pipeline(entry["output"]).classifier)
        pipes[name].set_progress_bar_config(disable=True)
        pipes[name].classifier_parameters = sum(p.numel() for p in pipes[name].classifier.parameters())

    def run(pipe, scale):
        targets = [i % pipe.classifier.config.num_classes for i in range(batch)] if scale else None
        pipe(batch_size=batch, target=targets, guidance_scale=scale, num_inference_steps=steps, output_type="np",
             generator=torch.Generator().manual_seed(0))

    calls = {"plain": lambda: run(base, 0.0)}
    calls.update({name: (lambda pipe=pipe: run(pipe, 1.0)) for name, pipe in pipes.items()})
    times = time_interleaved(calls, repeats=repeats, warmup=0)
    per_image = {k: v["cpu"]["min_s"] / batch * full_steps / steps for k, v in times.items()}
    return {"cpu_s_per_image": per_image, "parameters": {name: pipe.classifier_parameters for name, pipe in pipes.items()}}


def tiny_labels(folder: Path) -> Path:
    """--quick: 32 synthetic digits-rare samples (4 steps), labelled with pixel features into 4 clusters."""
    pipe = load_pipeline("digits-rare", "ddpm")
    settings = GenerationSettings(pipeline="digits-rare", method="synthetic", num_images=32, batch_size=32, seed=0,
                                  num_inference_steps=4, scheduler="ddpm")
    generate(pipe, folder / "synthetic", settings)
    label_synthetic(folder / "synthetic", folder / "labels", num_clusters=4, cohesion=0.0, features="pixels")
    return folder / "labels"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=None, help="a `side label` output (required unless --quick)")
    parser.add_argument("--work", type=Path, default=None, help="where the classifiers train (resumable)")
    parser.add_argument("--pipeline", default="digits-rare")
    parser.add_argument("--sizes", default="auto,resnet8:32,resnet10:16,demo,paper")
    parser.add_argument("--subset", type=int, default=None, help="train on the first N labelled images only")
    parser.add_argument("--batch", type=int, default=PAPER.batch_size)
    parser.add_argument("--steps", type=int, default=5, help="sampling steps timed (per-image cost is per step x 50)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny made-up labels, 2 training steps (smoke run)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory() if args.quick or args.work is None else None
    work = Path(scratch.name) if scratch else args.work
    max_steps, sizes = None, args.sizes.split(",")
    if args.quick:
        args.labels, max_steps, sizes, args.batch, args.steps, args.repeats = tiny_labels(work), 2, ["auto", "resnet10:8"], 4, 2, 1
    if args.labels is None:
        parser.error("--labels is required (the output of `side label`), or pass --quick")
    labels = args.labels
    if args.subset:
        labels = subset_labels(args.labels, args.subset, work / f"labels-{args.subset}")
    info, started = machine_info(), time.perf_counter()
    trained = {name: train_size(name, labels, work, args.pipeline, PAPER, max_steps) for name in sizes}
    costs = sampling_costs(args.pipeline, trained, args.batch, args.steps, args.repeats, PAPER.num_inference_steps)
    rows = []
    for name, entry in trained.items():
        entry["parameters"] = costs["parameters"][name]
        entry["guided_cpu_s_per_image"] = costs["cpu_s_per_image"][name]
        entry["guided_over_plain"] = costs["cpu_s_per_image"][name] / costs["cpu_s_per_image"]["plain"]
        for split in entry["evaluation"].values():
            split["ci95"] = wilson(split["accuracy"], split["count"])
        accuracy = [f"{entry['evaluation'][k]['accuracy']:.3f} [{entry['evaluation'][k]['ci95'][0]:.3f}, {entry['evaluation'][k]['ci95'][1]:.3f}]"
                    for k in ("clean", "q0", "q1", "q2", "q3")]
        rows.append([name, entry["description"], f"{entry['parameters'] / 1e6:.2f} M", entry["global_step"],
                     f"{entry['cpu_s']:.0f}", *accuracy, f"{entry['guided_cpu_s_per_image']:.3f}", f"{entry['guided_over_plain']:.2f}"])
    header = ["size", "network", "params", "steps", "train CPU s", "clean", "q0", "q1", "q2", "q3", "guided CPU s / image", "/ plain"]
    print(machine_line(info))
    print(f"labels: {labels} ({trained[sizes[0]]['num_train']} training images); plain sampling "
          f"{costs['cpu_s_per_image']['plain']:.3f} CPU s / image")
    print(markdown_table(header, rows))
    results = {"machine": info, "labels": str(labels), "subset": args.subset, "preset": "paper", "sizes": trained,
               "plain_cpu_s_per_image": costs["cpu_s_per_image"]["plain"], "wall_s": round(time.perf_counter() - started, 1),
               "load_average_1min_at_end": round(os.getloadavg()[0], 2)}
    name = "classifier_size_quick" if args.quick else f"classifier_size{f'_{args.subset}' if args.subset else ''}"
    print(f"written to {write_results(name, results, args.output)}")
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
