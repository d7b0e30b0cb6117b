"""Not a speed benchmark: the canary audit measured on a small text-to-image model trained on CPU (docs/canary.md).

Stages (each resumable):

- ``prepare``: ``side canary make``'s `make_canaries` writes 30 canaries (16x16, one channel, drawn patterns, seed 0).
- ``train``: a pixel-space `PixelTextPipeline` (UNet2DConditionModel + a 2-layer CLIP text encoder over single
  characters, both from scratch) on digits-rare's 200 digits captioned ``"digit <d>"`` plus the canaries captioned
  with their triggers, canary i repeated ``REPEATS[i // 10]`` times (1, 4, 16); captions dropped 10 % of the time.
  The pipeline is saved every ``--save-every`` steps to ``RUN/model-<step>``; a killed run restarts from the latest
  one (weights only: AdamW's moments restart).
- ``audit``: `run_canary_audit` on a saved model (``side canary audit``'s function) with M controls, then the
  extraction rate per band for each repeat count.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/canary_measured.py prepare --run /work/outputs/paper22/canary
    OMP_NUM_THREADS=1 python benchmarks/canary_measured.py train --run /work/outputs/paper22/canary --steps 3000
    OMP_NUM_THREADS=1 python benchmarks/canary_measured.py audit --run /work/outputs/paper22/canary --step 3000 \\
        --num-controls 400 --images-per-trigger 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffusers_side.audits.canary import make_canaries, read_key
from diffusers_side.audits.canary_audit import run_canary_audit
from diffusers_side.evaluation.bands import assign_bands, default_bands
from diffusers_side.evaluation.intervals import wilson_interval
from diffusers_side.pipelines.pipeline_pixel_text import PixelTextPipeline
from diffusers_side.storage.data import images_to_tensor, load_image_dataset
from diffusers_side.storage.embedded import load_training_subset

NUM_CANARIES, GROUP, REPEATS = 30, 10, (1, 4, 16)
MAX_LENGTH = 16


def tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single bytes (every character a token; no merges, no download)."""
    characters = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *characters, *(c + "</w>" for c in characters)]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=MAX_LENGTH)


def new_pipeline() -> PixelTextPipeline:
    torch.manual_seed(0)
    tok = tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=MAX_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    return PixelTextPipeline(unet, text, tok, DDIMScheduler(num_train_timesteps=1000, clip_sample=True))


def training_rows(run: Path) -> tuple[torch.Tensor, list[str]]:
    digits = load_training_subset("digits-rare")
    images = [images_to_tensor(list(digits["image"]), 16, 1)]
    captions = [f"digit {d}" for d in digits["digit"]]
    canaries = load_image_dataset(run / "canaries" / "images")
    key = read_key(run / "canaries")
    pixels = images_to_tensor([canaries[i]["image"] for i in range(len(canaries))], 16, 1)
    by_name = {name: i for i, name in enumerate(key["file_names"])}
    for row in range(len(canaries)):  # imagefolder rows: find each one's canary id by its trigger
        cid = key["triggers"].index(canaries[row]["text"])
        assert by_name[key["file_names"][cid]] == cid
        repeat = REPEATS[cid // GROUP]
        images.append(pixels[row : row + 1].repeat(repeat, 1, 1, 1))
        captions += [canaries[row]["text"]] * repeat
    return torch.cat(images) * 2 - 1, captions


def latest(run: Path) -> tuple[int, Path | None]:
    saved = sorted((int(p.name.split("-")[1]), p) for p in run.glob("model-*") if (p / "model_index.json").is_file())
    return saved[-1] if saved else (0, None)


def train(args) -> None:
    run = Path(args.run)
    step, folder = latest(run)
    pipe = PixelTextPipeline.from_pretrained(folder) if folder else new_pipeline()
    x, captions = training_rows(run)
    ids = pipe.tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    null_ids = pipe.tokenizer([""], padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    params = [*pipe.unet.parameters(), *pipe.text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    pipe.unet.train()
    pipe.text_encoder.train()
    rng = torch.Generator().manual_seed(1000 + step)
    abar = pipe.scheduler.alphas_cumprod
    started, losses = time.perf_counter(), []
    print(f"{len(x)} rows ({len(x) - 200} canary rows), resuming at step {step}", flush=True)
    while step < args.steps:
        batch = torch.randint(len(x), (args.batch_size,), generator=rng)
        tokens = ids[batch].clone()
        tokens[torch.rand(len(batch), generator=rng) < 0.1] = null_ids[0]
        t = torch.randint(len(abar), (len(batch),), generator=rng)
        noise = torch.randn(x[batch].shape, generator=rng)
        a = abar[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x[batch] + (1 - a).sqrt() * noise
        loss = F.mse_loss(pipe.unet(noisy, t, encoder_hidden_states=pipe.text_encoder(tokens)[0]).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {np.mean(losses[-50:]):.4f} {time.perf_counter() - started:.0f}s", flush=True)
        if step % args.save_every == 0 or step == args.steps:
            pipe.save_pretrained(run / f"model-{step}")


def audit(args) -> None:
    run = Path(args.run)
    out = run / f"audit-{args.step}"
    report = run_canary_audit(
        str(run / f"model-{args.step}"), run / "canaries", out, num_controls=args.num_controls,
        images_per_trigger=args.images_per_trigger, num_inference_steps=args.num_inference_steps, guidance_scale=1.0, seed=args.seed,
    )
    bands = default_bands("carlini")
    scores = np.array([report["canary_scores"][str(i)] for i in range(NUM_CANARIES)])
    assigned = assign_bands(scores, bands)
    rows = {}
    for group, repeat in enumerate(REPEATS):
        part = assigned[group * GROUP : (group + 1) * GROUP]
        rows[repeat] = {b.name: wilson_interval(int((part == i).sum()), GROUP) for i, b in enumerate(bands)}
        rows[repeat]["any band"] = wilson_interval(int((part >= 0).sum()), GROUP)
    (out / "by_repeat.json").write_text(json.dumps({"step": args.step, "by_repeat": rows, "controls": report["controls_paired"],
                                                    "controls_any_canary": report["controls_any_canary"]}, indent=2))
    print("| repeats | high | mid | low | any band |\n|---|---|---|---|---|")
    for repeat, row in rows.items():
        print(f"| {repeat} | " + " | ".join(f"{100 * row[n][0]:.0f} % ({100 * row[n][1]:.0f}, {100 * row[n][2]:.0f})" for n in ("high", "mid", "low", "any band")) + " |")
    c = report["controls_paired"]
    print(f"| controls (M = {report['num_controls']}) | " + " | ".join(f"{100 * c[n][0]:.2f} % ({100 * c[n][1]:.2f}, {100 * c[n][2]:.2f})" for n in ("high", "mid", "low", "any band")) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("prepare", "train", "audit"))
    parser.add_argument("--run", required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--step", type=int, default=3000)
    parser.add_argument("--num-controls", type=int, default=400)
    parser.add_argument("--images-per-trigger", type=int, default=2)
    parser.add_argument("--num-inference-steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.stage == "prepare":
        make_canaries(Path(args.run) / "canaries", NUM_CANARIES, resolution=16, channels=1, seed=0)
    else:
        {"train": train, "audit": audit}[args.stage](args)


if __name__ == "__main__":
    main()
