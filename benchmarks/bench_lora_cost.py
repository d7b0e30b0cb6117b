"""Benchmark: the cost of SIDE's two branches on the embedded model (classifier guidance vs LoRA fine-tuning).

In one process, with alternating rounds (see `bench_common.time_interleaved`), it times

- one optimisation step (loss, backward, AdamW) of each branch's training, with the real losses:
  ``classifier_step`` (`classification_loss`, the demo's classifier: ResNet-18 layout, base 16, batch 128) and
  ``lora_step`` (`lora_denoising_loss`, rank 8 on the default targets, batch 64 and 128);
- sampling one batch with ``uncond`` (plain DDIM), ``side`` (classifier guidance, lambda 1), ``side_lora``
  (the LoRA-conditioned UNet, CFG scale 1: one UNet call per step) and ``side_lora_cfg`` (CFG scale 3: the
  conditional and null predictions in one doubled batch).

Weights are those of the embedded model with a fresh classifier and fresh adapters: the cost does not depend
on them. Reported per step / per image (sampling at ``--steps`` DDIM steps), min over rounds, CPU time for
single-threaded CPU runs.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_lora_cost.py           # writes results/lora_cost.json
    OMP_NUM_THREADS=1 python benchmarks/bench_lora_cost.py --quick
"""

from __future__ import annotations

import argparse
import functools

import torch
from bench_common import machine_info, markdown_table, ratio_clock, time_interleaved, write_results
from diffusers import DDPMScheduler

from diffusers_side import SIDELoRAPipeline, SIDEPipeline, TimeDependentClassifier
from diffusers_side.pipelines.loading import load_pipeline
from diffusers_side.training.classifier import classification_loss
from diffusers_side.training.common import PIXEL_VALUES
from diffusers_side.training.lora import lora_denoising_loss

NUM_LABELS = 54  # K' of the demo's labels


def training_step(model: torch.nn.Module, loss, batch: dict, optimizer: torch.optim.Optimizer) -> None:
    """One optimisation step as `training.common.train` takes it (no clipping, no accelerate)."""
    output = loss(model, batch, torch.Generator().manual_seed(0))
    output.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke run)")
    parser.add_argument("--batch", type=int, default=16, help="images per sampling batch")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps when sampling")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None, help="results file (default: results/lora_cost.json; --quick writes none unless given)")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.repeats = 2, 2, 1

    base = load_pipeline("default")
    noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
    torch.manual_seed(0)
    classifier = TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=NUM_LABELS, base_channels=16)
    lora = SIDELoRAPipeline.from_base(base, NUM_LABELS, rank=8)
    side = SIDEPipeline(base.unet, base.scheduler, classifier.eval())
    for pipe in (base, side, lora):
        pipe.set_progress_bar_config(disable=True)

    def batch(size: int) -> dict:
        return {PIXEL_VALUES: torch.rand(size, 1, 16, 16) * 2 - 1, "label": torch.randint(NUM_LABELS, (size,))}

    classifier_loss = functools.partial(
        classification_loss, noise_scheduler=noise_scheduler, label_column="label", time_dependent=True, random_flip=False
    )
    lora_loss = functools.partial(
        lora_denoising_loss, noise_scheduler=noise_scheduler, label_column="label", label_dropout=0.1,
        random_flip=False, null_label=lora.null_label,
    )
    classifier_train = TimeDependentClassifier(in_channels=1, sample_size=16, num_classes=NUM_LABELS, base_channels=16)
    classifier_optimizer = torch.optim.AdamW(classifier_train.parameters(), lr=1e-3)
    lora_optimizer = torch.optim.AdamW([p for p in lora.unet.parameters() if p.requires_grad], lr=5e-4)
    sizes = (8, 8) if args.quick else (64, 128)
    train_calls = {
        f"classifier_step_b{sizes[1]}": lambda: training_step(classifier_train, classifier_loss, batch(sizes[1]), classifier_optimizer),
        f"lora_step_b{sizes[0]}": lambda: training_step(lora.unet, lora_loss, batch(sizes[0]), lora_optimizer),
        f"lora_step_b{sizes[1]}": lambda: training_step(lora.unet, lora_loss, batch(sizes[1]), lora_optimizer),
    }
    targets = torch.arange(args.batch) % NUM_LABELS

    def sample(pipe, **kwargs):
        return lambda: pipe(batch_size=args.batch, num_inference_steps=args.steps, output_type="pt",
                            generator=torch.Generator().manual_seed(0), **kwargs)

    lora.unet.eval()
    sample_calls = {
        "uncond": sample(side, guidance_scale=0.0),
        "side": sample(side, target=targets, guidance_scale=1.0),
        "side_lora": sample(lora, target=targets, guidance_scale=1.0),
        "side_lora_cfg": sample(lora, target=targets, guidance_scale=3.0),
    }
    clock = ratio_clock()
    timings = time_interleaved({**train_calls, **sample_calls}, repeats=args.repeats, warmup=1)
    per_unit = {name: timings[name][clock]["min_s"] for name in train_calls}
    per_unit.update({name: timings[name][clock]["min_s"] / args.batch for name in sample_calls})
    results = {
        "machine": machine_info(),
        "clock": clock,
        "settings": {"sampling_batch": args.batch, "ddim_steps": args.steps, "repeats": args.repeats, "num_labels": NUM_LABELS},
        "seconds_per_training_step": {name: round(per_unit[name], 4) for name in train_calls},
        "seconds_per_image": {name: round(per_unit[name], 4) for name in sample_calls},
        "raw": timings,
    }
    rows = [[name, f"{per_unit[name]:.4f}", "s / training step"] for name in train_calls]
    rows += [[name, f"{per_unit[name]:.4f}", f"s / image ({args.steps} steps)"] for name in sample_calls]
    print(markdown_table(["measurement", clock + " time", "unit"], rows))
    if not args.quick or args.output:
        print(f"written to {write_results('lora_cost', results, args.output)}")


if __name__ == "__main__":
    main()
