"""Not a speed benchmark: the memorization divergence M (SIDE Def. 1) of one training run at several step counts.

Each model (an embedded name, a pipeline folder, or a training checkpoint ``checkpoint-N`` whose EMA weights
are scored, as the saved model would be) gets `memorization_divergence` on its training set and on as many
holdout images, with the same seed, eps and solver settings. For the embedded digits models the holdout is
the `load_digits` images not in the model's subset (`embedded_holdout`). Results are appended as JSON lines to
``--output`` (one per model; models already there are skipped, so a killed run resumes), then printed as a
markdown table.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/divergence_by_steps.py --reference digits-rare \\
        --models /work/outputs/divergence/rare-train/checkpoint-{500,1500,3000} digits-rare \\
        --num-samples 200 --output /work/outputs/divergence/steps.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusers_side.audits.divergence import embedded_holdout, memorization_divergence
from diffusers_side.storage.embedded import load_training_subset
from diffusers_side.storage.sources import resolve_folder


def load_model(spec: str, scheduler_source: str) -> tuple[UNet2DModel, DDPMScheduler, int | None]:
    """(unet, scheduler, training step or None): a checkpoint's EMA UNet with the reference model's schedule."""
    path = Path(spec)
    if (path / "training_state.json").exists():
        step = json.loads((path / "training_state.json").read_text())["global_step"]
        unet = UNet2DModel.from_pretrained(path / "ema")
    else:
        step = None
        unet = UNet2DModel.from_pretrained(resolve_folder(spec), subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(resolve_folder(scheduler_source), subfolder="scheduler")
    return unet, scheduler, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="digits-rare", help="Embedded model whose training set is D.")
    parser.add_argument("--models", nargs="+", required=True, help="Checkpoint folders, pipeline folders or names.")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eps", type=float, default=None, help="Default: the scheduler's sigma_min.")
    parser.add_argument("--rtol", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    done = {}
    if args.output.exists():
        done = {row["model"]: row for row in map(json.loads, args.output.read_text().splitlines()) if row}
    reference = load_training_subset(args.reference)["image"]
    holdout = embedded_holdout(args.reference)
    for spec in args.models:
        if spec in done:
            continue
        unet, scheduler, step = load_model(spec, args.reference)
        result = memorization_divergence(
            (unet, scheduler), reference, holdout, eps=args.eps, num_samples=args.num_samples, seed=args.seed,
            batch_size=args.batch_size, rtol=args.rtol, atol=args.rtol,
        )
        row = {"model": spec, "step": step, "settings": vars(args) | {"output": str(args.output)}, **result.to_dict()}
        with open(args.output, "a") as handle:  # one line per model: a crash loses at most the model in progress
            handle.write(json.dumps(row) + "\n")
        done[spec] = row
    print("| model | step | M train (95 % CI) | M holdout (95 % CI) | gap (95 % CI) | minutes |")
    print("|---|---|---|---|---|---|")
    for spec in args.models:
        row = done[spec]
        train, held = row["train"], row["holdout"]
        print(
            f"| {Path(spec).name} | {row['step'] or ''} | {train['value']:.1f} ({train['ci_low']:.1f}, {train['ci_high']:.1f}) "
            f"| {held['value']:.1f} ({held['ci_low']:.1f}, {held['ci_high']:.1f}) "
            f"| {row['gap']:.1f} ({row['gap_ci'][0]:.1f}, {row['gap_ci'][1]:.1f}) | {row['seconds'] / 60:.1f} |"
        )


if __name__ == "__main__":
    main()
