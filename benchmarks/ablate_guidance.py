"""Ablation of SIDE's guidance on one target: where does it help extraction, where does it hurt?

Not a speed benchmark: the investigation behind README's "Results on the embedded model". Every
variant samples the same ``N_G`` seeds as ``side extract`` (image i uses ``image_seed(seed, i, "extraction")`` and
the target cluster ``image_target``) and is scored against the training set with the library's
normalized L2 (`find_best_matches` + `extraction_metrics`, default bands), so variants compare at equal
N_G and seeds. A variant is ``scale[@tmin:tmax][+random]``:

- ``scale``: lambda (0 = plain sampling, Carlini UnCond);
- ``@tmin:tmax``: guide only at the steps whose timestep t lies in ``[tmin, tmax]``;
- ``+random``: a control, each step's guidance shift replaced by Gaussian noise of the same per-image
  RMS (is it the direction of the classifier gradient that matters, or only its size?).

It also reports the hit rate: the fraction of generations that the classifier, at t = 0, assigns to
their target cluster (chance = 1 / number of clusters).

Usage::

    python benchmarks/ablate_guidance.py --pipeline side-demo/classifier-side \\
        --variants 0,1,1@500:1000,1@0:500,1+random --eta 0 --output ablation.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_common import machine_info

from diffusers_side import SIDEPipeline
from diffusers_side.evaluation.bands import default_bands
from diffusers_side.evaluation.metrics import extraction_metrics
from diffusers_side.generation.engine import image_seed, image_target
from diffusers_side.generation.seeds import EXTRACTION
from diffusers_side.guidance.classifier import ClassifierGuide
from diffusers_side.similarity.measures import find_best_matches
from diffusers_side.storage.data import find_image_column, images_to_tensor, load_image_dataset

SIMILARITY = "carlini"


class MatchedNoiseGuide(ClassifierGuide):
    """The paper's classifier guide with each step's shift replaced by Gaussian noise of the same per-image RMS.

    A control: is it the direction of the classifier gradient that matters, or only its size?
    """

    def __init__(self, classifier, window=None, generator: torch.Generator | None = None):
        super().__init__(classifier, window)
        self.generator = generator

    def guided_output(self, pipe, model_input, timestep, step_index, model_output, targets, scale):
        guided = super().guided_output(pipe, model_input, timestep, step_index, model_output, targets, scale)
        shift_rms = (guided - model_output).flatten(1).pow(2).mean(dim=1).sqrt().view(-1, 1, 1, 1)
        noise = torch.randn(model_output.shape, generator=self.generator).to(model_output)
        return model_output + noise * shift_rms


def parse_variant(text: str) -> dict:
    """``"1.5@200:1000+random"`` -> scale 1.5, window (200, 1000), random control."""
    random_control = text.endswith("+random")
    text = text.removesuffix("+random")
    scale, _, window = text.partition("@")
    window = tuple(float(edge) for edge in window.split(":")) if window else None
    return {"scale": float(scale), "window": window, "random": random_control}


def variant_guide(pipe: SIDEPipeline, variant: dict, seed: int) -> ClassifierGuide:
    """The guide of a variant: the pipeline's classifier on x_t, in its window, or the matched-noise control."""
    if variant["random"]:
        return MatchedNoiseGuide(pipe.classifier, variant["window"], torch.Generator().manual_seed(seed))
    return ClassifierGuide(pipe.classifier, variant["window"])


def sample(pipe: SIDEPipeline, variant: dict, num_images: int, seed: int, batch_size: int, eta: float, steps: int):
    """Images in [0, 1] and their targets, generated exactly as `side extract` seeds them."""
    guide = variant_guide(pipe, variant, seed)
    num_classes = pipe.classifier.config.num_classes
    seeds = [image_seed(seed, index, EXTRACTION) for index in range(num_images)]
    targets = torch.tensor([image_target(s, num_classes) for s in seeds])
    images = []
    for start in range(0, num_images, batch_size):
        batch_seeds = seeds[start : start + batch_size]
        images.append(
            pipe(
                batch_size=len(batch_seeds),
                target=targets[start : start + batch_size],
                guidance_scale=variant["scale"],
                num_inference_steps=steps,
                generator=[torch.Generator().manual_seed(s) for s in batch_seeds],
                eta=eta,
                output_type="pt",
                guide=guide,
            ).images
        )
    return torch.cat(images), targets


@torch.no_grad()
def hit_rate(pipe: SIDEPipeline, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of images the classifier assigns to their target at t = 0 (inputs in [-1, 1])."""
    predictions = pipe.classifier(images * 2 - 1, torch.zeros(len(images), dtype=torch.long)).argmax(dim=-1)
    return float((predictions == targets).float().mean())


def as_rows(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8).flatten(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", required=True, help="a SIDEPipeline folder with its classifier (side train-classifier)")
    parser.add_argument("--reference", default="default", help="the target's training set (default: the embedded subset)")
    parser.add_argument("--variants", default="0,1", help="comma-separated scale[@tmin:tmax][+random] (default: 0,1)")
    parser.add_argument("--num-images", type=int, default=500, help="N_G per variant (default: 500, as side demo)")
    parser.add_argument("--seed", type=int, default=0, help="run seed, as side extract's --seed (default: 0)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 ancestral (default: 0)")
    parser.add_argument("--num-inference-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--output", help="append the results as JSON lines to this file")
    args = parser.parse_args(argv)
    variants = [(text, parse_variant(text)) for text in args.variants.split(",")]

    pipe = SIDEPipeline.from_pretrained(args.pipeline)  # an embedded name, folder or repo id
    if pipe.classifier is None:
        parser.error(f"--pipeline {args.pipeline!r} has no classifier; pass the output of `side train-classifier`.")
    pipe.set_progress_bar_config(disable=True)
    reference = load_image_dataset(args.reference)
    reference_rows = as_rows(images_to_tensor(reference[find_image_column(reference)]))
    bands = default_bands(SIMILARITY)
    print("| variant | eta | AMS low | AMS mid | AMS high | UMS low | UMS mid | UMS high | Gu ratio | hit rate | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for text, variant in variants:
        started = time.perf_counter()
        images, targets = sample(pipe, variant, args.num_images, args.seed, args.batch_size, args.eta, args.num_inference_steps)
        matches = find_best_matches(as_rows(images), reference_rows, SIMILARITY, show_progress=False)
        metrics = extraction_metrics(matches, bands, SIMILARITY)
        result = {
            "variant": text, "eta": args.eta, "pipeline": args.pipeline, "num_images": args.num_images, "seed": args.seed,
            "ams": metrics["ams"], "ums": metrics["ums"], "memorization_ratio": metrics["memorization_ratio"],
            "hit_rate": hit_rate(pipe, images, targets), "chance": 1 / pipe.classifier.config.num_classes,
            "seconds": round(time.perf_counter() - started, 1),
        }
        cells = [100 * result[kind][band] for kind in ("ams", "ums") for band in ("low", "mid", "high")]
        cells += [100 * result["memorization_ratio"], 100 * result["hit_rate"]]
        print(f"| {text} | {args.eta:g} | " + " | ".join(f"{value:.1f}" for value in cells) + f" | {result['seconds']} |")
        if args.output:
            with open(args.output, "a") as file:
                file.write(json.dumps({**result, "machine": machine_info()}) + "\n")


if __name__ == "__main__":
    main()
