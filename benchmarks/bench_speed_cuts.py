"""Benchmark: where the paper preset's time goes on digits-rare, and what each speed cut buys, before/after in one run.

At the paper preset's shapes (`diffusers_side.workflows.demo.PAPER` on the embedded ``digits-rare`` target: 16x16
grayscale, 50 ancestral DDPM steps, generation shards of 250 images, classifier batch 64) it measures, with one
thread and process CPU time (`bench_common`), in alternating rounds:

1. **Profiles** (`torch.profiler`, self CPU time per operator) of one unit of each stage: a synthesis step (UNet
   forward on a shard), labelling (UNet features of a shard), a classifier training step (ResNet-34 width 64, the
   paper's, and the ``auto`` size) and a guided step (classifier forward and backward to x_t, frozen).
2. **Guided sampling** per image against plain sampling, ``SIDEPipeline`` at lambda 1 with fixed targets vs lambda 0,
   for the demo's classifier (ResNet-18 width 16), the ``auto`` one (resnet8 width 16) and the paper's (ResNet-34
   width 64), each **before** (BatchNorm as its own layer, `set_fused_inference(False)`) and **after** (BatchNorm
   folded into channels-last convolutions, the library's default). Guidance 0 is checked bit-identical to
   `DDPMPipeline`, and the largest pixel difference between after and before is recorded.
3. **Options** for the guided step: the layer-by-layer classifier converted to channels-last as a whole (the usual
   recipe), bfloat16 autocast of the fused classifier (speed, and the relative error of its input gradient against
   float32) and, with ``--compile``, `torch.compile` (compile time counted with its worker processes); for the rest:
   `torch.inference_mode` instead of `torch.no_grad` for the UNet, and the fused AdamW and bf16 autocast of a
   training step.
4. **Data loading** of a training batch: decoding the labelled set's PNG images per batch (the library's
   `image_dataloader`) against indexing a preloaded tensor.

Random weights (the cost does not depend on them) with non-trivial BatchNorm statistics; ``digits-rare``'s own UNet.
The ratio goal (issue 20): guided sampling with the demo's classifier at most 1.25x plain sampling per image.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/bench_speed_cuts.py               # results/speed_cuts.json, ~10 CPU min
    OMP_NUM_THREADS=1 python benchmarks/bench_speed_cuts.py --compile     # also torch.compile (minutes of compiling)
    OMP_NUM_THREADS=1 python benchmarks/bench_speed_cuts.py --quick       # smoke run
"""

from __future__ import annotations

import argparse
import copy
import functools
import resource
import time

import numpy as np
import PIL.Image
import torch
from bench_common import Stopwatch, machine_info, machine_line, markdown_table, time_interleaved, write_results
from datasets import Dataset, Features, Image, Value
from diffusers import DDPMPipeline, DDPMScheduler
from torch.profiler import ProfilerActivity, profile

from diffusers_side import SIDEPipeline, TimeDependentClassifier
from diffusers_side.labels.features import UNetFeatureExtractor
from diffusers_side.pipelines.loading import load_pipeline
from diffusers_side.training.classifier import classification_loss
from diffusers_side.training.common import PIXEL_VALUES, ImageData, image_dataloader
from diffusers_side.workflows.demo import PAPER

NUM_LABELS = 60  # K' of about 100 clusters kept (the cost barely depends on it)
# "auto": the size rule's network for 16 px before 9fced44 (resnet8 width 16; the rule now picks the ResNet-18 of "demo").
# Kept under its old name so that results/speed_cuts*.json and benchmarks README section 8 stay comparable.
SIZES = {"demo": ("resnet18", 16), "auto": ("resnet8", 16), "paper": ("resnet34", 64)}
GOAL = 1.25


def make_classifier(name: str, in_channels: int = 1, sample_size: int = 16, num_labels: int = NUM_LABELS) -> TimeDependentClassifier:
    """A classifier of size ``name`` with random weights and BatchNorm statistics from three noisy batches."""
    layers, width = SIZES[name]
    torch.manual_seed(0)
    classifier = TimeDependentClassifier(in_channels=in_channels, sample_size=sample_size, num_classes=num_labels,
                                         layers=layers, base_channels=width)
    with torch.no_grad():
        for _ in range(3):
            classifier(torch.randn(8, in_channels, sample_size, sample_size), torch.randint(0, 1000, (8,)))
    return classifier.eval()


def input_gradient(classifier, sample: torch.Tensor, timestep: torch.Tensor, targets: torch.Tensor, dtype=None) -> torch.Tensor:
    """grad_x log p_phi(c | x_t, t) as the pipeline takes it (frozen classifier, gradient to the input only)."""
    with torch.enable_grad():
        noisy = sample.detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = classifier(noisy, timestep.expand(len(noisy)))
        log_probs = logits.float().log_softmax(-1)
        (gradient,) = torch.autograd.grad(log_probs[torch.arange(len(noisy)), targets].sum(), noisy)
    return gradient


def top_operators(call, rows: int = 6) -> list[dict]:
    """The operators with the most self CPU time over one ``call()`` (after a warm-up call)."""
    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2), "share": round(e.self_cpu_time_total / total, 3),
             "calls": e.count} for e in events[:rows]]


def training_step(classifier, loss, batch, optimizer) -> None:
    output = loss(classifier, batch, torch.Generator().manual_seed(0))
    output.loss.backward()
    torch.nn.utils.clip_grad_norm_(classifier.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def profiles(unet, scheduler, batch: int, train_batch: int) -> dict:
    """Section 1: the top operators of one unit of each stage."""
    sample, timestep = torch.randn(batch, 1, 16, 16), torch.tensor(500)
    targets = torch.arange(batch) % NUM_LABELS
    extractor = UNetFeatureExtractor(unet, scheduler)
    loss = functools.partial(classification_loss, noise_scheduler=DDPMScheduler.from_config(scheduler.config),
                             label_column="label", time_dependent=True, random_flip=False)
    train_batch_data = {PIXEL_VALUES: torch.rand(train_batch, 1, 16, 16) * 2 - 1, "label": torch.arange(train_batch) % NUM_LABELS}
    result = {}
    with torch.no_grad():
        result["synthesis step (UNet forward)"] = top_operators(lambda: unet(sample, timestep))
        result["labelling (UNet features)"] = top_operators(lambda: extractor(sample.clamp(-1, 1) / 2 + 0.5))
    for name in ("paper", "auto"):
        classifier = make_classifier(name).train()
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-4)
        result[f"training step ({name}, batch {train_batch})"] = top_operators(
            lambda: training_step(classifier, loss, train_batch_data, optimizer))
    for name in ("demo", "auto", "paper"):
        classifier = make_classifier(name).requires_grad_(False)
        result[f"guided step ({name}, folded)"] = top_operators(lambda: input_gradient(classifier, sample, timestep, targets))
    return result


def sampling(unet, batch: int, steps: int, repeats: int, names: list[str]) -> dict:
    """Section 2: plain vs guided sampling per image, BatchNorm folded (after) or not (before)."""
    scheduler = DDPMScheduler.from_config(load_pipeline("digits-rare").scheduler.config)
    plain = SIDEPipeline(unet, scheduler)
    plain.set_progress_bar_config(disable=True)
    reference = DDPMPipeline(unet, scheduler)
    reference.set_progress_bar_config(disable=True)

    def run(pipe, scale):
        return pipe(batch_size=batch, target=[i % NUM_LABELS for i in range(batch)] if scale else None, guidance_scale=scale,
                    num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np").images

    parity = bool((run(plain, 0.0) == reference(batch_size=batch, num_inference_steps=steps, output_type="np",
                                                 generator=torch.Generator().manual_seed(0)).images).all())
    def guided(pipe, fold):
        pipe.classifier.set_fused_inference(fold)
        return run(pipe, 1.0)

    calls = {"plain": lambda: run(plain, 0.0)}
    pipes = {}
    for name in names:
        pipes[name] = SIDEPipeline(unet, scheduler, make_classifier(name))
        pipes[name].set_progress_bar_config(disable=True)
        for fold, label in ((False, "before"), (True, "after")):
            calls[f"{name} {label}"] = functools.partial(guided, pipes[name], fold)
    times = time_interleaved(calls, repeats=repeats, warmup=0)
    per_image = {key: value["cpu"]["min_s"] / batch for key, value in times.items()}
    differences = {name: float(np.abs(guided(pipe, True) - guided(pipe, False)).max()) for name, pipe in pipes.items()}
    for pipe in pipes.values():
        pipe.classifier.set_fused_inference(True)
    return {"batch": batch, "steps": steps, "guidance_0_equals_DDPMPipeline": parity, "cpu_s_per_image": per_image,
            "ratio_to_plain": {k: v / per_image["plain"] for k, v in per_image.items() if k != "plain"},
            "max_pixel_difference_after_vs_before": differences, "raw": times}


def classifier_options(batch: int, repeats: int, names: list[str], compile_: bool) -> dict:
    """Section 3: the guided step layer by layer (with a channels-last model), fused, under bf16 autocast, compiled."""
    sample, timestep, targets = torch.randn(batch, 1, 16, 16), torch.tensor(500), torch.arange(batch) % NUM_LABELS
    result = {}
    for name in names:
        classifier = make_classifier(name).requires_grad_(False)
        channels_last = copy.deepcopy(classifier).to(memory_format=torch.channels_last).set_fused_inference(False)
        calls = {
            "layer by layer": lambda: input_gradient(classifier.set_fused_inference(False), sample, timestep, targets),
            "layer by layer, channels-last model": lambda: input_gradient(channels_last, sample, timestep, targets),
            "fused (library)": lambda: input_gradient(classifier.set_fused_inference(True), sample, timestep, targets),
            "fused, bf16 autocast": lambda: input_gradient(classifier.set_fused_inference(True), sample, timestep, targets, torch.bfloat16),
        }
        entry = {}
        if compile_:
            compiled = torch.compile(classifier.set_fused_inference(True))
            with Stopwatch() as watch:
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                input_gradient(compiled, sample, timestep, targets)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
            entry["compile_wall_s"] = watch.wall
            entry["compile_cpu_s_with_workers"] = watch.cpu + (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
            calls["fused, torch.compile"] = lambda: input_gradient(compiled, sample, timestep, targets)
        times = time_interleaved(calls, repeats=repeats, warmup=1)
        classifier.set_fused_inference(True)
        reference = input_gradient(classifier, sample, timestep, targets)
        bf16 = input_gradient(classifier, sample, timestep, targets, torch.bfloat16)
        entry.update({
            "cpu_ms_per_image_step": {k: 1e3 * v["cpu"]["min_s"] / batch for k, v in times.items()},
            "bf16_gradient_relative_error": float((bf16 - reference).norm() / reference.norm()),
            "bf16_gradient_cosine": float(torch.nn.functional.cosine_similarity(bf16.flatten(), reference.flatten(), dim=0)),
        })
        result[name] = entry
    return result


def unet_and_training_options(unet, batch: int, train_batch: int, repeats: int, names: list[str]) -> dict:
    """Section 3: inference_mode vs no_grad for the UNet; default vs fused AdamW and bf16 autocast for training."""
    sample, timestep = torch.randn(batch, 1, 16, 16), torch.tensor(500)

    def forward(mode):
        with mode():
            unet(sample, timestep)

    unet_times = time_interleaved({"no_grad": lambda: forward(torch.no_grad), "inference_mode": lambda: forward(torch.inference_mode)},
                                  repeats=repeats, warmup=1)
    loss = functools.partial(classification_loss, noise_scheduler=DDPMScheduler(num_train_timesteps=1000),
                             label_column="label", time_dependent=True, random_flip=False)
    data = {PIXEL_VALUES: torch.rand(train_batch, 1, 16, 16) * 2 - 1, "label": torch.arange(train_batch) % NUM_LABELS}
    training = {}
    for name in names:
        models = {key: make_classifier(name).train() for key in ("default AdamW", "fused AdamW", "bf16 autocast")}
        optimizers = {key: torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2, fused=key == "fused AdamW")
                      for key, model in models.items()}

        def step(key):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=key == "bf16 autocast"):
                training_step(models[key], loss, data, optimizers[key])

        times = time_interleaved({key: functools.partial(step, key) for key in models}, repeats=repeats, warmup=1)
        training[name] = {key: v["cpu"]["min_s"] for key, v in times.items()}
    return {"unet_forward_cpu_ms_per_image": {k: 1e3 * v["cpu"]["min_s"] / batch for k, v in unet_times.items()},
            "training_step_cpu_s": training}


def data_loading(num_images: int, train_batch: int) -> dict:
    """Section 4: CPU seconds per training batch spent decoding PNG images vs indexing preloaded tensors."""
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L") for _ in range(num_images)]
    features = Features({"image": Image(), "label": Value("int64")})
    dataset = Dataset.from_dict({"image": images, "label": list(range(num_images))}, features=features)
    loader = image_dataloader(ImageData(dataset, "memory", "image", 1, 16), train_batch, False, extra_columns=["label"])
    preloaded = torch.stack([torch.from_numpy(np.asarray(image, dtype=np.float32)) for image in images])[:, None] / 127.5 - 1

    def preloaded_epoch():
        order = torch.randperm(num_images)
        for start in range(0, num_images, train_batch):
            preloaded[order[start:start + train_batch]]

    times = time_interleaved({"decode per batch": lambda: list(loader), "preloaded tensor": preloaded_epoch}, repeats=2, warmup=1)
    batches = -(-num_images // train_batch)
    return {key: v["cpu"]["min_s"] / batches for key, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--batch", type=int, default=PAPER.batch_size, help="images per generation shard")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps per timed call (the cost per step is constant)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the classifier (minutes)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    batch, train_batch, steps, repeats = args.batch, PAPER.classifier_batch_size, args.steps, args.repeats
    names = ["demo", "auto", "paper"]
    if args.quick:
        batch, train_batch, steps, repeats, names = 4, 4, 2, 1, ["demo", "auto"]
        SIZES["paper"] = ("resnet10", 8)  # keeps the profile section's names while staying tiny

    info = machine_info()
    started = time.perf_counter()
    pipe = load_pipeline("digits-rare")
    unet = pipe.unet.eval().requires_grad_(False)
    results = {"machine": info, "settings": {"batch": batch, "train_batch": train_batch, "steps": steps, "repeats": repeats}}
    results["profiles"] = profiles(unet, pipe.scheduler, batch, train_batch)
    results["sampling"] = sampling(unet, batch, steps, repeats, names)
    results["sampling_batch_16"] = sampling(unet, min(16, batch), steps, repeats, ["demo"])
    results["classifier_options"] = classifier_options(batch, repeats, names, args.compile)
    results["unet_and_training_options"] = unet_and_training_options(unet, batch, train_batch, repeats, names)
    results["data_loading_cpu_s_per_batch"] = data_loading(max(train_batch * 4, 8) if args.quick else 2_000, train_batch)
    results["load_average_1min_at_end"] = round(__import__("os").getloadavg()[0], 2)
    results["wall_s"] = round(time.perf_counter() - started, 1)

    print(machine_line(info))
    for stage, ops in results["profiles"].items():
        print(f"{stage}: " + ", ".join(f"{o['op']} {100 * o['share']:.0f} %" for o in ops[:4]))
    for key in ("sampling", "sampling_batch_16"):
        s = results[key]
        rows = [[k, f"{1e3 * v:.1f}", f"{s['ratio_to_plain'].get(k, 1.0):.2f}"] for k, v in s["cpu_s_per_image"].items()]
        print(f"\nbatch {s['batch']} x {s['steps']} steps (guidance 0 == DDPMPipeline: {s['guidance_0_equals_DDPMPipeline']}), goal demo after <= {GOAL}")
        print(markdown_table(["sampling", "CPU ms / image", "/ plain"], rows))
    for name, entry in results["classifier_options"].items():
        print(f"{name}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in entry["cpu_ms_per_image_step"].items())
              + f"; bf16 gradient error {entry['bf16_gradient_relative_error']:.3f}")
    print(results["unet_and_training_options"])
    print("data loading CPU s per batch:", results["data_loading_cpu_s_per_batch"])
    print(f"written to {write_results('speed_cuts_quick' if args.quick else 'speed_cuts', results, args.output)}")


if __name__ == "__main__":
    main()
