"""Benchmark: the extra cost of guidance on the predicted clean image (``guidance_space="x0"``) on the embedded model.

In one process, with alternating rounds (see `bench_common.time_interleaved`), it times sampling one batch at
``--steps`` DDIM steps with

- ``uncond``: plain DDIM (`SIDEPipeline` at lambda 0, bit-identical to `DDIMPipeline`);
- ``side_xt``: the paper's guidance, the time-dependent classifier on x_t (lambda 1);
- ``side_x0``: the same classifier at t = 0 on x0_hat, the gradient back-propagated through the UNet (lambda 0.1);
- ``cond_x0``: the time-independent classifier on x0_hat (lambda 0.1);

and, per denoising step, the UNet forward alone and the UNet forward + backward to its input (what x0 guidance
adds). The classifiers have the demo's architecture (ResNet-18 layout, base width 16, K' = 54 labels) with fresh
weights: the cost does not depend on them. Reported per image (and per step), minimum over rounds, CPU time for
single-threaded CPU runs.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_x0_guidance.py            # writes results/x0_guidance_cost.json
    OMP_NUM_THREADS=1 python benchmarks/bench_x0_guidance.py --quick
"""

from __future__ import annotations

import argparse

import torch
from bench_common import machine_info, markdown_table, ratio_clock, time_interleaved, write_results

from diffusers_side import SIDEPipeline, TimeDependentClassifier
from diffusers_side.pipelines.loading import load_pipeline

NUM_LABELS = 54  # K' of the demo's labels
BASE_CHANNELS = 16  # the demo's classifier width


def classifier(time_dependent: bool) -> TimeDependentClassifier:
    torch.manual_seed(0)
    return TimeDependentClassifier(
        in_channels=1, sample_size=16, num_classes=NUM_LABELS, base_channels=BASE_CHANNELS, time_dependent=time_dependent
    ).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke run)")
    parser.add_argument("--batch", type=int, default=16, help="images per sampling batch (N)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None, help="results JSON (default: results/x0_guidance_cost.json)")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.repeats = 2, 2, 1

    base = load_pipeline("default")
    side = SIDEPipeline(base.unet, base.scheduler, classifier(time_dependent=True))
    cond = SIDEPipeline(base.unet, base.scheduler, classifier(time_dependent=False))
    for pipe in (side, cond):
        pipe.set_progress_bar_config(disable=True)
    targets = torch.arange(args.batch) % NUM_LABELS

    def sample(pipe, **kwargs):
        return lambda: pipe(batch_size=args.batch, num_inference_steps=args.steps, output_type="pt",
                            generator=torch.Generator().manual_seed(0), **kwargs)

    sample_calls = {
        "uncond": sample(side, guidance_scale=0.0),
        "side_xt": sample(side, target=targets, guidance_scale=1.0),
        "side_x0": sample(side, target=targets, guidance_scale=0.1, guidance_space="x0"),
        "cond_x0": sample(cond, target=targets, guidance_scale=0.1, guidance_space="x0"),
    }
    unet, x_t, t = base.unet.eval().requires_grad_(False), torch.randn(args.batch, 1, 16, 16), torch.tensor(500)

    def unet_forward():
        with torch.no_grad():
            return unet(x_t, t).sample

    def unet_forward_backward():
        x = x_t.clone().requires_grad_(True)
        return torch.autograd.grad(unet(x, t).sample.square().sum(), x)

    step_calls = {"unet_forward": unet_forward, "unet_forward_backward": unet_forward_backward}
    clock = ratio_clock()
    timings = time_interleaved({**sample_calls, **step_calls}, repeats=args.repeats, warmup=1)
    per_image = {name: timings[name][clock]["min_s"] / args.batch for name in sample_calls}
    per_step = {name: timings[name][clock]["min_s"] / args.batch for name in step_calls}
    results = {
        "machine": machine_info(),
        "clock": clock,
        "settings": {"batch": args.batch, "ddim_steps": args.steps, "repeats": args.repeats, "num_labels": NUM_LABELS,
                     "classifier_base_channels": BASE_CHANNELS},
        "seconds_per_image": {name: round(value, 4) for name, value in per_image.items()},
        "seconds_per_image_step": {name: round(value, 6) for name, value in per_step.items()},
        "raw": timings,
    }
    rows = [[name, f"{value:.4f}", f"{value / per_image['uncond']:.2f}", f"{value / per_image['side_xt']:.2f}"]
            for name, value in per_image.items()]
    print(markdown_table([f"per image, {args.steps} DDIM steps", f"{clock} s", "/ uncond", "/ side_xt"], rows))
    print(markdown_table(["per image and step", f"{clock} ms", "/ forward"],
                         [[name, f"{1000 * value:.3f}", f"{value / per_step['unet_forward']:.2f}"] for name, value in per_step.items()]))
    if not args.quick or args.output:
        print(f"written to {write_results('x0_guidance_cost', results, args.output)}")


if __name__ == "__main__":
    main()
