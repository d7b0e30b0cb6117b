"""Benchmark: how each stage of a SIDE audit scales with the image size, N_syn and N_G, and what a GPU audit would take.

Short measurements, one thread, process CPU seconds per unit of work (`bench_common`), with the peak resident memory
of each call (the kernel's high-water mark reset to the current RSS just before it, in this process, which runs with
glibc's mmap threshold fixed, `with_fixed_mmap_threshold`, so that memory freed by earlier calls is not reused
unseen):

1. **Image size** (8, 16, 32, 64 px; 1 and 3 channels), the target's architecture (``digits-rare``'s UNet, 32/64/64
   channels) at each size with random weights: a synthesis step (UNet forward, per image), labelling features (per
   image), a classifier training step (per image, batch 64; the ``auto`` size and the paper's ResNet-34 width 64), a
   guided step (classifier forward and backward to x_t, per image) and the nearest-match search (per generation
   against 1,000 training images of that size).
2. **N_syn**: labelling (`fit_surrogate_labels`, K 100, 10 restarts) on digits-rare's UNet features of N_syn points
   (its 200 training images' features repeated with 5 % noise, as in ``bench_full_scale.py``); synthesis and
   classifier training are linear in N_syn by construction (images x steps; epochs x N_syn / batch steps) and are
   drawn from the per-unit costs of 1.
3. **N_G**: the nearest-match search of N_G generations against digits-rare's 200 training images; sampling is
   linear in N_G (per-image cost of 1 times N_G).
4. **CIFAR-10 scale**: the search of 1,000 generations against 50,000 x 3,072 uint8 training images (extrapolated
   linearly to the ~27,000 generations of a paper-preset audit) and scikit-learn KMeans (K 100) on 50,000 x 3,072
   float32 points: the seconds per Lloyd iteration of one restart, extrapolated to 10 restarts of at most
   `KMEANS_ITERATIONS` iterations (an assumption: real features converge in tens).
5. **Projections** for a paper-preset audit (`PAPER`'s counts: N_syn 10,000, sweep 7 x 1,000, N_G 5,000 per method,
   two classifiers for 20 epochs) of a CIFAR-10 (DDPM's 35.7 M-parameter UNet, 32x32 RGB, 50,000 training images)
   and a CelebA-64 target (the same UNet at 64x64 with attention at 16x16; 162,770 training images): CPU hours from
   the measured CPU seconds per UNet step (batch 4) and classifier step, and one-GPU minutes from the counted FLOPs
   (`torch.utils.flop_counter`) at an assumed sustained rate (``--assumed-gpu-tflops``), floored by kernel launches
   (operators per UNet call counted by `torch.profiler` x ``--launch-us``). Not measured on a GPU: to be checked
   when one is lent (``--device cuda`` times sections 1 and 5 there).

Writes ``results/scaling.json`` and the log-log figure ``results/scaling.png``.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py            # ~10 CPU min on one core
    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from bench_common import Stopwatch, machine_info, measure_peak_rss, synchronize, write_results
from diffusers import DDPMScheduler, UNet2DModel
from sklearn.cluster import KMeans
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from diffusers_side import TimeDependentClassifier
from diffusers_side.labels.features import UNetFeatureExtractor, embed_images
from diffusers_side.labels.surrogate_labels import fit_surrogate_labels
from diffusers_side.models.classifier_size import PRESET_SIZES, ClassifierSize, auto_classifier_size
from diffusers_side.similarity.measures import find_best_matches
from diffusers_side.storage.data import images_to_tensor
from diffusers_side.storage.embedded import get_embedded_model, load_training_subset
from diffusers_side.training.classifier import classification_loss
from diffusers_side.training.common import PIXEL_VALUES
from diffusers_side.workflows.demo import PAPER

NUM_LABELS = 60
KMEANS_ITERATIONS = 50
TRAIN_BATCH = PAPER.classifier_batch_size
# 32x32 RGB DDPM (Ho et al. 2020; google/ddpm-cifar10-32's config) and the same network at 64 px.
CIFAR_UNET = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), dropout=0.1)
CELEBA64_UNET = {**CIFAR_UNET, "sample_size": 64, "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                 "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")}
TARGETS = {"cifar10": (CIFAR_UNET, 50_000), "celeba64": (CELEBA64_UNET, 162_770)}
SIZES = dict(PRESET_SIZES)  # --quick swaps the paper's ResNet-34 for a tiny network


def timed(call, device: str = "cpu") -> tuple[float, float, float]:
    """(CPU s, wall s, peak MiB over the RSS before) of ``call()``, after one untimed warm-up call."""
    call()
    synchronize(device)
    with Stopwatch(device) as watch:
        _, memory = measure_peak_rss(call)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        call()
        memory = {"peak_over_before_mib": torch.cuda.max_memory_allocated() / 2**20}
    return watch.cpu, watch.wall, memory["peak_over_before_mib"]


def target_unet(size: int, channels: int, device: str = "cpu") -> UNet2DModel:
    """digits-rare's UNet architecture at ``size`` px and ``channels`` channels, random weights."""
    config = json.loads((get_embedded_model("digits-rare").folder / "unet" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    return UNet2DModel(**{**config, "sample_size": size, "in_channels": channels, "out_channels": channels}).eval().to(device)


def classifier(size: int, channels: int, name: str, device: str = "cpu", num_images: int = 9_000) -> TimeDependentClassifier:
    """The ``auto`` classifier for ``num_images`` labelled images of this size, or a preset one, random weights."""
    chosen = auto_classifier_size(size, num_images) if name == "auto" else SIZES[name]
    torch.manual_seed(0)
    return TimeDependentClassifier(in_channels=channels, sample_size=size, num_classes=NUM_LABELS, layers=chosen.layers,
                                   base_channels=chosen.base_channels).to(device)


def guided_step(model, sample, timestep):
    noisy = sample.detach().requires_grad_(True)
    log_probs = model(noisy, timestep.expand(len(sample))).log_softmax(-1)
    torch.autograd.grad(log_probs[:, 0].sum(), noisy)


def training_step(model, loss, batch, optimizer):
    loss(model, batch, torch.Generator().manual_seed(0)).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def size_costs(size: int, channels: int, pixel_budget: int, device: str, train_batch: int) -> dict:
    """Section 1: per-unit CPU s, wall s and peak MiB of each stage at one image size."""
    batch = max(2, min(256, pixel_budget // (size * size)))
    unet = target_unet(size, channels, device)
    sample, timestep = torch.randn(batch, channels, size, size, device=device), torch.tensor(500, device=device)
    extractor = UNetFeatureExtractor(unet, DDPMScheduler(num_train_timesteps=1000))
    loss = functools.partial(classification_loss, noise_scheduler=DDPMScheduler(num_train_timesteps=1000),
                             label_column="label", time_dependent=True, random_flip=False)
    costs = {}
    with torch.no_grad():
        costs["synthesis (UNet step)"] = (timed(lambda: unet(sample, timestep), device), batch)
        costs["labelling features"] = (timed(lambda: extractor(sample.clamp(-1, 1) / 2 + 0.5), device), batch)
    for name in ("auto", "paper"):
        model = classifier(size, channels, name, device).train()
        tb = train_batch if name == "auto" or size <= 16 else max(2, train_batch * 256 // (size * size))
        data = {PIXEL_VALUES: torch.rand(tb, channels, size, size, device=device) * 2 - 1,
                "label": torch.arange(tb, device=device) % NUM_LABELS}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        costs[f"train step {name}"] = (timed(lambda: training_step(model, loss, data, optimizer), device), tb)
        model.eval().requires_grad_(False)
        guided_batch = batch if name == "auto" else max(2, batch // 4)
        costs[f"guided step {name}"] = (timed(lambda: guided_step(model, sample[:guided_batch], timestep), device), guided_batch)
    reference = torch.randint(0, 256, (1_000, channels * size * size), dtype=torch.uint8)
    queries = torch.randint(0, 256, (batch, channels * size * size), dtype=torch.uint8)
    costs["search (per generation vs 1,000)"] = (timed(lambda: find_best_matches(queries, reference, show_progress=False)), batch)
    return {stage: {"cpu_s_per_unit": cpu / units, "wall_s_per_unit": wall / units, "peak_mib": peak,
                    "peak_mib_per_unit": peak / units, "units": units}
            for stage, ((cpu, wall, peak), units) in costs.items()}


def labelling_vs_n_syn(sizes: list[int]) -> dict:
    """Section 2: `fit_surrogate_labels` (K 100, 10 restarts) CPU s and peak MiB against N_syn."""
    model = get_embedded_model("digits-rare")
    from diffusers_side.pipelines.loading import load_pipeline

    pipe = load_pipeline("digits-rare")
    images = images_to_tensor(load_training_subset(model.name)["image"])
    base = embed_images(UNetFeatureExtractor(pipe.unet, pipe.scheduler), images)
    generator, result = torch.Generator().manual_seed(0), {}
    for n in sizes:
        rows = base[torch.arange(n) % len(base)]
        rows = rows + 0.05 * rows.std() * torch.randn(rows.shape, generator=generator)
        clusters = min(PAPER.num_clusters, n // 4)
        with Stopwatch() as watch:
            _, memory = measure_peak_rss(lambda: fit_surrogate_labels(rows, num_clusters=clusters, seed=0))
        result[n] = {"cpu_s": watch.cpu, "wall_s": watch.wall, "peak_mib": memory["peak_over_before_mib"], "dim": base.shape[1]}
    return result


def search_vs_n_g(sizes: list[int]) -> dict:
    """Section 3: the nearest-match search of N_G generations against digits-rare's 200 training images."""
    reference = (images_to_tensor(load_training_subset("digits-rare")["image"]).flatten(1) * 255).round().to(torch.uint8)
    result = {}
    for n in sizes:
        queries = torch.randint(0, 256, (n, reference.shape[1]), dtype=torch.uint8)
        with Stopwatch() as watch:
            _, memory = measure_peak_rss(lambda: find_best_matches(queries, reference, show_progress=False))
        result[n] = {"cpu_s": watch.cpu, "wall_s": watch.wall, "peak_mib": memory["peak_over_before_mib"]}
    return result


def cifar_scale(num_train: int, dim: int, queries: int, kmeans_iterations: int) -> dict:
    """Section 4: search and KMeans at CIFAR-10 scale (``num_train`` x ``dim``)."""
    generator = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 256, (num_train, dim), dtype=torch.uint8, generator=generator)
    generated = torch.randint(0, 256, (queries, dim), dtype=torch.uint8, generator=generator)
    with Stopwatch() as search:
        _, search_memory = measure_peak_rss(lambda: find_best_matches(generated, reference, show_progress=False))
    points = reference.float().div_(255).numpy()
    kmeans = KMeans(n_clusters=PAPER.num_clusters, n_init=1, max_iter=kmeans_iterations, tol=0.0, random_state=0)
    with Stopwatch() as clustering:
        _, kmeans_memory = measure_peak_rss(lambda: kmeans.fit(points))
    per_iteration = clustering.cpu / max(1, kmeans.n_iter_)
    audit_generations = PAPER.num_images * 4 + PAPER.selection_num_images * len(PAPER.sweep_guidance_scales)
    return {
        "num_train": num_train, "dim": dim, "queries": queries,
        "search_cpu_s": search.cpu, "search_wall_s": search.wall, "search_peak_mib": search_memory["peak_over_before_mib"],
        "search_cpu_s_per_generation": search.cpu / queries,
        "search_audit_cpu_min": search.cpu / queries * audit_generations / 60, "audit_generations": audit_generations,
        "kmeans_iterations": int(kmeans.n_iter_), "kmeans_cpu_s": clustering.cpu, "kmeans_wall_s": clustering.wall,
        "kmeans_peak_mib": kmeans_memory["peak_over_before_mib"], "kmeans_cpu_s_per_iteration": per_iteration,
        "kmeans_10_restarts_cpu_min": per_iteration * KMEANS_ITERATIONS * 10 / 60,
    }


def count_flops(call) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def operators_per_call(call) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    return sum(event.count for event in prof.key_averages() if event.key.startswith("aten::") and event.self_cpu_time_total > 0)


def counted_step_flops(model, size: int, channels: int, device: str) -> tuple[int, int]:
    """FLOPs of one guided step (forward + backward to the input, frozen weights) and of one training step, per image."""
    model.eval().requires_grad_(False)
    noisy = torch.randn(1, channels, size, size, device=device, requires_grad=True)
    guided = count_flops(lambda: model(noisy, torch.tensor([500], device=device)).log_softmax(-1)[:, 0].sum().backward())
    model.train().requires_grad_(True)
    train = count_flops(lambda: model(noisy.detach(), torch.tensor([500], device=device)).sum().backward())
    model.zero_grad(set_to_none=True)
    return guided, train


def audit_counts(config=PAPER) -> dict:
    """Units of work of one paper-preset audit: UNet images (x steps), guided images, training images, generations."""
    sweep_guided = sum(1 for scale in config.sweep_guidance_scales if scale > 0) * config.selection_num_images
    generations = 4 * config.num_images + len(config.sweep_guidance_scales) * config.selection_num_images
    steps_per_epoch = math.ceil(math.ceil(config.num_synthetic * 0.9) / config.classifier_batch_size)
    return {
        "unet_images": config.num_synthetic + generations, "steps": config.num_inference_steps,
        "guided_images": sweep_guided + 2 * config.num_images, "feature_images": config.num_synthetic,
        "training_images": 2 * config.classifier_epochs * steps_per_epoch * config.classifier_batch_size,
        "generations": generations, "shard": config.batch_size,
    }


def projection(unet_config: dict, num_train: int, kmeans: dict, device: str, tflops: float, launch_us: float) -> dict:
    """Section 5: CPU hours (measured per-unit costs) and one-GPU minutes (FLOPs, launch floor) of a paper-preset audit."""
    size, channels = unet_config["sample_size"], unet_config["in_channels"]
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config).eval().to(device)
    sample, timestep = torch.randn(4, channels, size, size, device=device), torch.tensor(500, device=device)
    with torch.no_grad():
        unet_flops = count_flops(lambda: unet(sample[:1], timestep))
        unet_cpu = timed(lambda: unet(sample, timestep), device)[0 if device == "cpu" else 1] / 4
        launches = operators_per_call(lambda: unet(sample, timestep))
    counts, dim = audit_counts(), channels * size * size
    unet_units = counts["unet_images"] * counts["steps"] + counts["feature_images"]
    rows = {"UNet (synthesis, extraction, features)": (unet_units * unet_cpu, unet_units * unet_flops,
                                                       launches * (unet_units / counts["shard"]))}
    kmeans_cpu = kmeans["kmeans_cpu_s_per_iteration"] * (PAPER.num_synthetic * 4608) / (kmeans["num_train"] * kmeans["dim"])
    rows["KMeans (10 restarts, CPU)"] = (kmeans_cpu * KMEANS_ITERATIONS * 10, 0, 0)
    pairs = counts["generations"] * num_train
    rows["search"] = (kmeans["search_cpu_s_per_generation"] * counts["generations"] * num_train / kmeans["num_train"] * dim / kmeans["dim"],
                      2 * pairs * dim, 0)
    result = {"unet_gflop_per_step": unet_flops / 1e9, "unet_cpu_s_per_image_step": unet_cpu, "operators_per_unet_call": launches,
              "counts": counts}
    for name in ("auto", "paper"):
        model = classifier(size, channels, name, device)
        guided_flops, train_flops = counted_step_flops(model, size, channels, device)
        model.eval().requires_grad_(False)
        guided_cpu = timed(lambda: guided_step(model, sample, timestep), device)[0 if device == "cpu" else 1] / 4
        model.train().requires_grad_(True)
        loss = functools.partial(classification_loss, noise_scheduler=DDPMScheduler(num_train_timesteps=1000),
                                 label_column="label", time_dependent=True, random_flip=False)
        data = {PIXEL_VALUES: sample.clamp(-1, 1), "label": torch.arange(4, device=device) % NUM_LABELS}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        train_cpu = timed(lambda: training_step(model, loss, data, optimizer), device)[0 if device == "cpu" else 1] / 4
        guided_units = counts["guided_images"] * counts["steps"]
        branch = dict(rows)
        branch[f"guided steps ({name})"] = (guided_units * guided_cpu, guided_units * guided_flops, 0)
        branch[f"training ({name})"] = (counts["training_images"] * train_cpu, counts["training_images"] * train_flops, 0)
        cpu_h = sum(cpu for cpu, _, _ in branch.values()) / 3600
        gpu_min = sum(max(flops / (tflops * 1e12), calls * launch_us * 1e-6) + (cpu if flops == 0 else 0)
                      for cpu, flops, calls in branch.values()) / 60
        result[name] = {"classifier_gflop_per_guided_step": guided_flops / 1e9, "classifier_cpu_s_per_guided_step": guided_cpu,
                        "stages_cpu_h": {k: v[0] / 3600 for k, v in branch.items()},
                        "stages_tflop": {k: v[1] / 1e12 for k, v in branch.items()}, "cpu_hours_1_core": cpu_h,
                        "gpu_minutes_projected": gpu_min}
    return result


def plot(results: dict, path: Path) -> None:
    """The log-log figure: per-unit cost and peak memory against pixels; stage totals against N_syn and N_G."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 9))
    by_size = results["image_size"]
    stages = list(next(iter(by_size.values())))
    for index, stage in enumerate(stages):
        for channels, style in (("1", "-o"), ("3", "--s")):
            keys = [k for k in by_size if k.endswith(f"x{channels}")]
            pixels = [int(k.split("x")[0]) ** 2 * int(channels) for k in keys]
            color = f"C{index}"
            axes[0, 0].plot(pixels, [by_size[k][stage]["cpu_s_per_unit"] for k in keys], style, color=color,
                            label=stage if channels == "1" else None)
            axes[0, 1].plot(pixels, [max(by_size[k][stage]["peak_mib_per_unit"], 1e-3) for k in keys], style, color=color)
    axes[0, 0].set(title="CPU s per unit (image, image-step, or generation vs 1,000)", xlabel="pixels x channels (solid 1 ch, dashed 3 ch)")
    axes[0, 1].set(title="peak memory per unit over the call's start (MiB; x batch for a stage)", xlabel="pixels x channels")
    axes[0, 0].legend(fontsize=7)
    n_syn = sorted(int(n) for n in results["n_syn"])
    digits = by_size.get("16x1")
    axes[1, 0].plot(n_syn, [results["n_syn"][str(n)]["cpu_s"] for n in n_syn], "-o", label="label: KMeans K 100 x 10 (measured)")
    if digits:
        steps, epochs = PAPER.num_inference_steps, PAPER.classifier_epochs
        axes[1, 0].plot(n_syn, [n * steps * digits["synthesis (UNet step)"]["cpu_s_per_unit"] for n in n_syn], "--", label="synthesize (per-image cost x N)")
        for name in ("auto", "paper"):
            axes[1, 0].plot(n_syn, [0.9 * n * epochs * digits[f"train step {name}"]["cpu_s_per_unit"] for n in n_syn], ":",
                            label=f"train {name} (20 epochs, per-image cost)")
    axes[1, 0].set(title="16x16 gray: CPU s against N_syn", xlabel="N_syn")
    n_g = sorted(int(n) for n in results["n_g"])
    axes[1, 1].plot(n_g, [results["n_g"][str(n)]["cpu_s"] for n in n_g], "-o", label="evaluate: search vs 200 (measured)")
    if digits:
        plain = PAPER.num_inference_steps * digits["synthesis (UNet step)"]["cpu_s_per_unit"]
        axes[1, 1].plot(n_g, [n * plain for n in n_g], "--", label="extract plain")
        for name in ("auto", "paper"):
            guided = plain + PAPER.num_inference_steps * digits[f"guided step {name}"]["cpu_s_per_unit"]
            axes[1, 1].plot(n_g, [n * guided for n in n_g], ":", label=f"extract guided ({name} classifier)")
    axes[1, 1].set(title="16x16 gray: CPU s against N_G", xlabel="N_G")
    for axis in axes.flat:
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
    for axis in axes[1]:
        axis.legend(fontsize=7)
    figure.suptitle(f"SIDE stage costs, 1 thread, {results['machine']['cpu']} ({results['machine']['date']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to time sections 1 and 5 on a GPU")
    parser.add_argument("--assumed-gpu-tflops", type=float, default=20.0, help="sustained TFLOP/s assumed for the GPU projection")
    parser.add_argument("--launch-us", type=float, default=10.0, help="seconds per kernel launch (us) for the launch floor")
    parser.add_argument("--output", default=None, help="JSON path (the figure goes next to it)")
    args = parser.parse_args()
    sizes, channels, budget, n_syn, n_g = (8, 16, 32, 64), (1, 3), 16_384, [500, 1_000, 2_000, 5_000, 10_000], [1_000, 5_000, 27_000]
    cifar = (50_000, 3_072, 1_000, 5)
    targets = TARGETS
    if args.quick:
        sizes, channels, budget, n_syn, n_g, cifar = (8, 16), (1,), 256, [120, 240], [50, 100], (500, 3_072, 20, 2)
        SIZES["paper"] = ClassifierSize("resnet10", 8)
        targets = {"tiny32": ({**CIFAR_UNET, "block_out_channels": (8, 8, 8, 8), "norm_num_groups": 4, "layers_per_block": 1}, 500)}
    info, started = machine_info(args.device), time.perf_counter()
    results = {"machine": info, "settings": {"sizes": sizes, "channels": channels, "pixel_budget": budget}, "image_size": {}}
    for size in sizes:
        for c in channels:
            results["image_size"][f"{size}x{c}"] = size_costs(size, c, budget, args.device, TRAIN_BATCH if not args.quick else 4)
            print(f"{size}x{size}x{c}:", {k: round(v["cpu_s_per_unit"] * 1e3, 3) for k, v in results["image_size"][f"{size}x{c}"].items()}, "CPU ms per unit", flush=True)
    results["n_syn"] = {str(n): v for n, v in labelling_vs_n_syn(n_syn).items()}
    results["n_g"] = {str(n): v for n, v in search_vs_n_g(n_g).items()}
    results["cifar10_scale"] = cifar_scale(*cifar)
    print("CIFAR-10 scale:", {k: round(v, 3) if isinstance(v, float) else v for k, v in results["cifar10_scale"].items()}, flush=True)
    results["projections"] = {
        name: {"num_train": num_train, **projection(config, num_train, results["cifar10_scale"], args.device,
                                                     args.assumed_gpu_tflops, args.launch_us)}
        for name, (config, num_train) in targets.items()
    }
    for name, projected in results["projections"].items():
        print(f"{name}: UNet {projected['unet_gflop_per_step']:.2f} GFLOP/step; " + "; ".join(
            f"{branch} classifier: {projected[branch]['cpu_hours_1_core']:.1f} CPU h, {projected[branch]['gpu_minutes_projected']:.1f} GPU min"
            for branch in ("auto", "paper")))
    results["assumptions"] = {"assumed_gpu_tflops": args.assumed_gpu_tflops, "launch_us": args.launch_us,
                              "kmeans_iterations": KMEANS_ITERATIONS}
    results["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    path = write_results("scaling_quick" if args.quick else "scaling", results, args.output)
    plot(results, path.with_suffix(".png"))
    print(f"written to {path} and {path.with_suffix('.png')}")


def with_fixed_mmap_threshold() -> None:
    """Re-run this script with glibc's mmap threshold fixed (`MALLOC_MMAP_THRESHOLD_`), once.

    glibc raises its threshold as large blocks are freed and then keeps them in the heap, so a call that follows a
    larger one would reuse freed memory and show no growth of the resident set. With the threshold fixed at 128 KiB
    every tensor above it is mapped on allocation and unmapped on release, and the high-water mark of each call is
    its own working set.
    """
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
        os.execv(sys.executable, [sys.executable, *sys.argv])


if __name__ == "__main__":
    with_fixed_mmap_threshold()
    main()
