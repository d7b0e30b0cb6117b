"""Benchmark: what `side demo --preset paper` costs, from a timed slice of each of its stages on the embedded model.

The preset (`diffusers_side.workflows.demo.PAPER`) is too slow to run whole on 2 CPU cores, so this script times a slice of
every stage with the preset's own settings and extrapolates each to full size:

- ``synthesize``: `generate` of ``--synthetic`` unguided images (50 DDIM steps); linear in images -> N_syn 10,000.
- ``label features``: the target's UNet features of those images (`embed_images`); linear in images -> 10,000.
- ``label kmeans``: `fit_surrogate_labels` (K 100, 10 restarts, cohesion auto) at two sizes (``--kmeans-sizes``),
  on the slice's features repeated with small noise; a line through the two times -> 10,000 (an assumption: the
  cost per point stays as between the two sizes; Lloyd iterations are linear in N).
- ``train classifier-side`` / ``train classifier-cond``: optimisation steps (`classification_loss`, AdamW) of the
  preset's ResNet-34 at width 64 and batch 64, time-dependent and time-independent; linear in steps -> 20 epochs
  over the training part of the labelled set, counted as if every synthetic image were kept (an upper bound: the
  cohesion filter drops some): 20 x ceil(9,000 / 64) = 2,820 steps each.
- ``extract``: plain (``uncond``, and SIDE at lambda 0, which skips the gradient), classifier-guided (``side`` with the
  time-dependent classifier, ``cond`` with the time-independent one) and exemplar-guided (``side-exemplar`` with an
  exemplar set of 10,000 images, the largest labelled set) sampling at 50 DDIM steps; linear in images -> 5,000 per
  method plus the sweep's 7 x 1,000 selection images (one lambda 0, six guided).
- a GPU estimate, not a measurement (no GPU was lent): the floating-point operations of each stage, counted with
  `torch.utils.flop_counter.FlopCounterMode` on one unit of work (a training step, a generated image), times the
  full size, divided by an assumed sustained throughput (``--assumed-gpu-tflops``, default 20 TFLOP/s: fp32/TF32 on
  a current data-centre GPU for these small convolutions, a guess stated as one). KMeans, features and the exemplar
  posterior are not counted (seconds on a CPU), nor kernel-launch latency, which dominates 16x16 images at batch 50.
- evaluation (the nearest-match search of ~27,000 generations against the 100 training images) is not timed: the
  demo's 2,000 x 100 take 0.4 s.

Random weights and random exemplar images: the cost does not depend on what they hold. Clock: process CPU time with one
thread (see `bench_common`); on a shared machine the wall time is longer, the CPU time is what the work needs. The
numbers are upper bounds when the machine is loaded (cache and memory bandwidth are shared too).

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_full_scale.py   # writes results/full_scale.json
    OMP_NUM_THREADS=1 python benchmarks/bench_full_scale.py --quick       # smoke run, results/full_scale_quick.json
    # the same preset on digits-rare with the classifier sized to the data (issue 20):
    OMP_NUM_THREADS=1 python benchmarks/bench_full_scale.py --pipeline digits-rare --classifier-size auto
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import tempfile

import torch
from bench_common import Stopwatch, machine_info, machine_line, markdown_table, write_results
from diffusers import DDPMScheduler
from torch.utils.flop_counter import FlopCounterMode

from diffusers_side import SIDEPipeline, TimeDependentClassifier
from diffusers_side.generation.engine import GenerationSettings, generate
from diffusers_side.guidance.exemplar import ExemplarPosterior
from diffusers_side.labels.features import embed_images, load_feature_extractor
from diffusers_side.labels.surrogate_labels import fit_surrogate_labels
from diffusers_side.models.classifier_size import CLASSIFIER_SIZES, resolve_classifier_size
from diffusers_side.pipelines.loading import load_pipeline
from diffusers_side.training.classifier import classification_loss
from diffusers_side.training.common import PIXEL_VALUES
from diffusers_side.workflows.demo import PAPER

NUM_LABELS = 60  # K' kept of K = 100 (the demo keeps about half; the cost barely depends on it)
VALIDATION_FRACTION = 0.1  # the classifier's default --validation_split


def full_sizes(config=PAPER) -> dict[str, int]:
    """Images or steps of each stage in the full preset run."""
    training_images = math.ceil(config.num_synthetic * (1 - VALIDATION_FRACTION))
    steps = config.classifier_epochs * math.ceil(training_images / config.classifier_batch_size)
    guided_sweep = sum(1 for scale in config.sweep_guidance_scales if scale > 0) * config.selection_num_images
    plain_sweep = sum(1 for scale in config.sweep_guidance_scales if scale == 0) * config.selection_num_images
    return {
        "synthesize": config.num_synthetic,
        "label features": config.num_synthetic,
        "label kmeans": config.num_synthetic,
        "train classifier-side": steps,
        "train classifier-cond": steps,
        "extract plain (uncond + sweep lambda 0)": config.num_images + plain_sweep,
        "extract side (report + sweep lambda > 0)": config.num_images + guided_sweep,
        "extract cond": config.num_images,
        "extract side-exemplar": config.num_images,
    }


def timed(call) -> dict:
    with Stopwatch() as watch:
        call()
    return watch.seconds()


def count_flops(call) -> int:
    """Floating-point operations of ``call()`` (convolutions and matrix products, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def time_training_steps(classifier: TimeDependentClassifier, loss, batch_size: int, steps: int) -> tuple[dict, int]:
    """``steps`` AdamW steps as `training.common.train` takes them (clipping included), after one untimed step
    whose operations are counted; returns the times and the operations of one step."""
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=PAPER.classifier_learning_rate, weight_decay=PAPER.classifier_weight_decay)
    generator = torch.Generator().manual_seed(0)

    def step():
        batch = {PIXEL_VALUES: torch.rand(batch_size, 1, 16, 16, generator=generator) * 2 - 1,
                 "label": torch.randint(NUM_LABELS, (batch_size,), generator=generator)}
        output = loss(classifier, batch, generator)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(classifier.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    classifier.train()
    flops = count_flops(step)
    return timed(lambda: [step() for _ in range(steps)]), flops


def paper_classifier(time_dependent: bool, size: str = "paper") -> TimeDependentClassifier:
    """The preset's classifier (``size="paper"``: ResNet-34 width 64) or another `CLASSIFIER_SIZES` entry, random weights."""
    training_images = math.ceil(PAPER.num_synthetic * (1 - VALIDATION_FRACTION))
    chosen = resolve_classifier_size(size, 16, training_images)
    torch.manual_seed(0)
    return TimeDependentClassifier(
        in_channels=1, sample_size=16, num_classes=NUM_LABELS, layers=chosen.layers,
        base_channels=chosen.base_channels, time_dependent=time_dependent,
    )


def sample(pipe: SIDEPipeline, num_images: int, batch_size: int, guided: bool, **options) -> None:
    for start in range(0, num_images, batch_size):
        size = min(batch_size, num_images - start)
        generators = [torch.Generator().manual_seed(start + i) for i in range(size)]
        targets = [i % NUM_LABELS for i in range(size)] if guided else None
        pipe(batch_size=size, target=targets, guidance_scale=1.0 if guided else 0.0,
             num_inference_steps=PAPER.num_inference_steps, generator=generators, output_type="np", **options)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny slices (smoke run)")
    parser.add_argument("--synthetic", type=int, default=200, help="images synthesized and embedded")
    parser.add_argument("--kmeans-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1000, 2000])
    parser.add_argument("--train-steps", type=int, default=30, help="time-dependent classifier steps (cond: a third)")
    parser.add_argument("--plain", type=int, default=100, help="plain generations")
    parser.add_argument("--guided", type=int, default=50, help="SIDE generations (cond and side-exemplar: --plain / 2)")
    parser.add_argument("--sampling-batch", type=int, default=50)
    parser.add_argument("--assumed-gpu-tflops", type=float, default=20.0, help="sustained TFLOP/s assumed for the GPU estimate")
    parser.add_argument("--pipeline", default="default", help="the target: an embedded name (default, digits-rare) or a folder")
    parser.add_argument("--classifier-size", default="paper", choices=CLASSIFIER_SIZES,
                        help="the classifiers' size (paper: the preset's ResNet-34 width 64; auto: sized to the data)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.quick:
        args.synthetic, args.kmeans_sizes, args.train_steps = 8, [120, 240], 2
        args.plain, args.guided, args.sampling_batch = 4, 2, 4
    return args


def measure_inputs(args, base, measured: dict, slices: dict) -> dict:
    """Time synthesis, UNet-feature labelling and KMeans at two sizes; returns the KMeans times by size."""
    with tempfile.TemporaryDirectory() as scratch:
        settings = GenerationSettings(
            pipeline=args.pipeline, method="synthetic", num_images=args.synthetic, batch_size=PAPER.batch_size,
            seed=0, num_inference_steps=PAPER.num_inference_steps,
        )
        measured["synthesize"] = timed(lambda: generate(base, os.path.join(scratch, "synthetic"), settings))
        slices["synthesize"] = args.synthetic
        dataset = generate(base, os.path.join(scratch, "synthetic"), settings)  # resumes: loads the finished set
        extractor = load_feature_extractor("unet", unet=base.unet, scheduler=base.scheduler)
        features = []
        measured["label features"] = timed(lambda: features.append(embed_images(extractor, dataset["image"])))
        slices["label features"] = args.synthetic

    kmeans_times = {}
    generator = torch.Generator().manual_seed(0)
    for size in args.kmeans_sizes:
        rows = features[0][torch.arange(size) % len(features[0])]
        rows = rows + 0.05 * rows.std() * torch.randn(rows.shape, generator=generator)
        kmeans_times[size] = timed(lambda: fit_surrogate_labels(rows, num_clusters=PAPER.num_clusters, seed=0))
    measured["label kmeans"] = kmeans_times[args.kmeans_sizes[1]]
    slices["label kmeans"] = args.kmeans_sizes[1]
    return kmeans_times


def measure_training(args, base, measured: dict, slices: dict, flops_per_unit: dict) -> None:
    """Time a slice of training of each classifier (cond: a third of the steps)."""
    noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
    for name, time_dependent, steps in (("train classifier-side", True, args.train_steps),
                                        ("train classifier-cond", False, max(1, args.train_steps // 3))):
        loss = functools.partial(classification_loss, noise_scheduler=noise_scheduler, label_column="label",
                                 time_dependent=time_dependent, random_flip=False)
        measured[name], flops_per_unit[name] = time_training_steps(
            paper_classifier(time_dependent, args.classifier_size), loss, PAPER.classifier_batch_size, steps
        )
        slices[name] = steps


def measure_sampling(args, base, measured: dict, slices: dict, flops_per_unit: dict) -> None:
    """Time a slice of each extraction method and count its floating-point operations per image."""
    side = SIDEPipeline(base.unet, base.scheduler, paper_classifier(True, args.classifier_size).eval())
    cond = SIDEPipeline(base.unet, base.scheduler, paper_classifier(False, args.classifier_size).eval())
    exemplars = ExemplarPosterior(torch.rand(PAPER.num_synthetic, 1, 16, 16) * 2 - 1,
                                  torch.arange(PAPER.num_synthetic) % NUM_LABELS, NUM_LABELS)
    for pipe in (side, cond):
        pipe.set_progress_bar_config(disable=True)
    secondary = max(1, args.plain // 2)
    runs = {
        "extract plain (uncond + sweep lambda 0)": (args.plain, lambda n: sample(side, n, args.sampling_batch, guided=False)),
        "extract side (report + sweep lambda > 0)": (args.guided, lambda n: sample(side, n, args.sampling_batch, guided=True)),
        "extract cond": (max(1, args.guided // 2), lambda n: sample(cond, n, args.sampling_batch, guided=True)),
        "extract side-exemplar": (secondary, lambda n: sample(side, n, args.sampling_batch, guided=True, exemplars=exemplars)),
    }
    for name, (count, run) in runs.items():
        measured[name] = timed(lambda: run(count))
        slices[name] = count
    # per image: 50 UNet forwards, plus with guidance 50 classifier forwards and backwards to the input (counted
    # outside the pipeline: the counter does not support its torch.autograd.grad)
    sample_input, timestep = torch.randn(1, 1, 16, 16), torch.tensor([500])
    with torch.no_grad():
        unet_flops = count_flops(lambda: base.unet(sample_input, timestep))

    def classifier_gradient(classifier):
        classifier.requires_grad_(False)  # as the pipeline's `frozen`: the gradient reaches the input only
        noisy = sample_input.clone().requires_grad_()
        classifier(noisy, timestep).log_softmax(dim=1)[:, 0].sum().backward()

    for name, pipe in (("extract side (report + sweep lambda > 0)", side), ("extract cond", cond)):
        flops_per_unit[name] = PAPER.num_inference_steps * (unet_flops + count_flops(lambda: classifier_gradient(pipe.classifier)))
    for name in ("synthesize", "extract plain (uncond + sweep lambda 0)", "extract side-exemplar"):
        flops_per_unit[name] = PAPER.num_inference_steps * unet_flops


def extrapolate(measured: dict, slices: dict, kmeans_times: dict, sizes: dict) -> tuple[list, float, float]:
    """Each stage at full size: table rows, total CPU seconds and the classifiers' share."""
    small, large = sorted(kmeans_times)
    rows, total_cpu_s, classifier_cpu_s = [], 0.0, 0.0
    for name, seconds in measured.items():
        if name == "label kmeans":  # a line through the two sizes
            slope = (kmeans_times[large]["cpu_s"] - kmeans_times[small]["cpu_s"]) / (large - small)
            full_s = max(kmeans_times[large]["cpu_s"] + slope * (sizes[name] - large), kmeans_times[large]["cpu_s"])
        else:
            full_s = seconds["cpu_s"] * sizes[name] / slices[name]
        total_cpu_s += full_s
        classifier_cpu_s += full_s if name.startswith("train") else 0.0
        rows.append([name, slices[name], f"{seconds['cpu_s']:.1f}", f"{seconds['wall_s']:.1f}", sizes[name],
                     f"{full_s / 60:.1f}"])
    return rows, total_cpu_s, classifier_cpu_s


def main() -> None:
    args = parse_args()
    info = machine_info()
    base = load_pipeline(args.pipeline)
    base.set_progress_bar_config(disable=True)
    measured, slices, flops_per_unit = {}, {}, {}
    kmeans_times = measure_inputs(args, base, measured, slices)
    measure_training(args, base, measured, slices, flops_per_unit)
    measure_sampling(args, base, measured, slices, flops_per_unit)

    sizes = full_sizes()
    rows, total_cpu_s, classifier_cpu_s = extrapolate(measured, slices, kmeans_times, sizes)
    one_core_h = total_cpu_s / 3600
    total_tflop = sum(flops * sizes[name] for name, flops in flops_per_unit.items()) / 1e12
    gpu_minutes = total_tflop / args.assumed_gpu_tflops / 60
    # `side demo` trains its classifiers on one thread (`--torch_threads 1`); everything else may use both cores.
    two_core_h = (classifier_cpu_s + (total_cpu_s - classifier_cpu_s) / 2) / 3600
    header = ["stage", "measured slice (images / steps)", "CPU s", "wall s", "full size", "extrapolated CPU min"]
    table = markdown_table(header, rows)
    kmeans_line = ", ".join(f"{size}: {t['cpu_s']:.1f} s" for size, t in kmeans_times.items())
    print(machine_line(info))
    print(table)
    print(f"KMeans CPU s at {kmeans_line}")
    print(f"total: {one_core_h:.1f} h on 1 core; {two_core_h:.1f} h on 2 cores (classifiers on one thread, the rest split ideally)")
    print(f"GPU estimate (not measured): {total_tflop:.0f} TFLOP counted; at an assumed {args.assumed_gpu_tflops:g} TFLOP/s "
          f"sustained, {gpu_minutes:.0f} min plus launch latency")
    results = {
        "machine": info, "preset": "paper", "pipeline": args.pipeline, "classifier_size": args.classifier_size, "measured": measured, "slices": slices, "full_sizes": sizes,
        "kmeans_cpu_s": {str(size): t["cpu_s"] for size, t in kmeans_times.items()},
        "extrapolated_cpu_min": {row[0]: float(row[5]) for row in rows},
        "total_hours_1_core": round(one_core_h, 2), "total_hours_2_cores": round(two_core_h, 2),
        "gflop_per_unit": {name: round(flops / 1e9, 3) for name, flops in flops_per_unit.items()},
        "total_tflop": round(total_tflop, 1), "assumed_gpu_tflops": args.assumed_gpu_tflops,
        "gpu_minutes_estimate": round(gpu_minutes, 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    name = "full_scale" + ("" if args.pipeline == "default" and args.classifier_size == "paper" else f"_{args.pipeline}_{args.classifier_size}")
    print(f"written to {write_results(name + ('_quick' if args.quick else ''), results, args.output)}")


if __name__ == "__main__":
    main()
