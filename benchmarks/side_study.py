"""SIDE study: under which settings does surrogate-conditional extraction beat plain sampling?

The investigation behind README's "Results on the embedded model" and issue 11. Every configuration
samples the same ``N_G`` seeds (image i uses ``image_seed(seed, i)``, as ``side extract``) and is scored
with the library's own evaluation code (`find_best_matches` + `extraction_metrics`: normalized L2,
default bands, the target's training set as reference).

Protocol (fixed before any run):

- **Selection vs report seeds.** Settings (lambda, variant, sampler) are chosen on the *selection*
  run seed (``--seed 1``) at a small N_G, then the chosen settings are measured once on the *report*
  run seed (``--seed 2``) at the largest N_G affordable. The surrogate labels, synthetic set and
  classifiers are built once per target (``side demo``'s stages, run seed 0) and shared by all
  configurations; no setting is ever chosen on the report seed.
- **Equal N_G, same seeds, same evaluation** for every method; bands, metric and reference are the
  library defaults and never change.
- **Intervals.** AMS: 95 % Wilson score interval (a binomial proportion over generations). UMS (distinct
  training images / N_G): estimate +- 1.96 bootstrap standard errors, 1,000 resamples of the generations
  with replacement (a distinct count shrinks under such resampling, so percentile and basic bootstrap
  intervals lie off-centre; the bootstrap is used for the spread only).
- **Every method under both samplers**: ``ddim`` (the target's 50-step DDIM, eta 0) and ``ddpm``
  (50-step ancestral `DDPMScheduler`, as ``side extract --scheduler ddpm``). UnCond gets its best.
- **Compute**: wall seconds of sampling (one thread), plus the one-off cost of the method's inputs
  (synthesis, labelling, classifier training) read from the demo's ``timings.json``; distinct training
  images per CPU-minute = distinct high-/mid-band matches / total minutes.
- **Diagnostic**: hit rate = generations assigned to their target at t = 0 (by the guiding classifier,
  or by the exemplar posterior).

A configuration is ``method/sampler/lambda/selection/window``:

- ``method``: ``uncond`` (Carlini UnCond), ``cond`` (Carlini Cond, time-independent classifier),
  ``side`` (the paper: time-dependent classifier), ``exemplar`` (Bayes guidance: the exact posterior
  p(c | x_t) of the noised labelled synthetic set, `diffusers_side.guidance.exemplar.ExemplarPosterior`),
  ``x0side`` / ``x0cond`` (guidance on the predicted clean image, ``side extract --method side|cond
  --guidance-space x0``: the time-dependent classifier at t = 0, or the time-independent one, on x0_hat,
  the gradient back-propagated through the UNet; see `diffusers_side.guidance.clean_image.CleanImageGuide`);
- ``sampler``: ``ddim`` or ``ddpm``;
- ``lambda``: the guidance scale (for ``x0side`` / ``x0cond`` the fraction of the noise prediction's RMS
  that guidance moves it by at each guided step, so useful values are small: 0.02-0.2);
- ``selection``: how each generation's target cluster is drawn: ``uniform`` over the kept clusters
  (paper), ``weighted`` (probability proportional to the cluster's cohesion minus the cut tau), or
  ``topF`` (uniform over the most cohesive fraction F, e.g. ``top0.2``), or ``duplicates``
  (probability proportional to the fraction of the cluster's synthetic images that have a
  near-duplicate in the synthetic set, normalized L2 < 0.5 within the synthetic set: Carlini et al.'s
  training-data-free sign of a memorized image);
- ``window``: ``tmin:tmax``, guide only at timesteps in that range (``all`` for every step).

Usage::

    python benchmarks/side_study.py --run outputs/demo-emb --seed 1 --num-images 300 \\
        --configs uncond/ddim/0/uniform/all exemplar/ddpm/1/top0.2/all x0side/ddpm/0.05/uniform/all \\
        --output outputs/study/emb-select.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import machine_info

from diffusers_side.evaluation.bands import assign_bands, default_bands
from diffusers_side.evaluation.metrics import extraction_metrics
from diffusers_side.generation.engine import image_seed
from diffusers_side.guidance.exemplar import ExemplarPosterior
from diffusers_side.labels.surrogate_labels import SurrogateLabels
from diffusers_side.pipelines.loading import load_classifier, load_pipeline
from diffusers_side.pipelines.pipeline_side import SIDEPipeline
from diffusers_side.similarity.measures import CARLINI_ALPHA, CARLINI_NUM_NEIGHBORS, find_best_matches
from diffusers_side.storage.data import find_image_column, images_to_tensor, load_image_dataset

SIMILARITY = "carlini"
DUPLICATE_THRESHOLD = 0.5
BOOTSTRAP_RESAMPLES = 1000
CURVE_POINTS = (50, 100, 200, 300, 500, 1000, 1500, 2000, 3000, 4000, 5000)
# One-off stages each method needs (names as in the demo's timings.json).
METHOD_STAGES = {
    "uncond": (),
    "cond": ("synthesize", "label", "train classifier-cond"),
    "side": ("synthesize", "label", "train classifier-side"),
    "exemplar": ("synthesize", "label"),
    "x0side": ("synthesize", "label", "train classifier-side"),
    "x0cond": ("synthesize", "label", "train classifier-cond"),
}
# The demo classifier each classifier-guided method uses (`exemplar` is guided by the posterior instead).
METHOD_CLASSIFIER = {"side": "side", "cond": "cond", "x0side": "side", "x0cond": "cond", "exemplar": "side"}
# Where the classifier reads the sample (`SIDEPipeline(guidance_space=...)`): x_t (the paper) or x0_hat.
METHOD_GUIDANCE_SPACE = {"x0side": "x0", "x0cond": "x0"}


def parse_config(text: str) -> dict:
    method, sampler, scale, selection, window = text.split("/")
    low, high = (float(edge) for edge in window.split(":")) if window != "all" else (float("-inf"), float("inf"))
    if method not in METHOD_STAGES or sampler not in ("ddim", "ddpm"):
        raise ValueError(f"Bad configuration {text!r}: method in {sorted(METHOD_STAGES)}, sampler ddim or ddpm.")
    return {"name": text, "method": method, "sampler": sampler, "scale": float(scale), "selection": selection,
            "window": (low, high), "guidance_space": METHOD_GUIDANCE_SPACE.get(method, "xt")}


def duplicate_fraction(images: torch.Tensor, labels: torch.Tensor, num_labels: int) -> np.ndarray:
    """Per label, the fraction of its synthetic images that have a near-duplicate in the synthetic set.

    Near-duplicate: Carlini's normalized L2 to the nearest *other* synthetic image below
    `DUPLICATE_THRESHOLD` (the same normalizer as the evaluation, computed within the synthetic set;
    no training image is used). Memorized images come back several times, so their clusters hold
    near-duplicates.
    """
    rows = (images.flatten(1).double() + 1) / 2
    distances = torch.cdist(rows, rows) / rows.shape[1] ** 0.5
    distances.fill_diagonal_(float("inf"))
    nearest = distances.sort(dim=1).values[:, :CARLINI_NUM_NEIGHBORS]
    scores = nearest[:, 0] / (CARLINI_ALPHA * nearest.mean(dim=1))
    duplicate = (scores < DUPLICATE_THRESHOLD).double()
    counts = torch.bincount(labels, minlength=num_labels).clamp(min=1)
    return (torch.zeros(num_labels, dtype=torch.float64).index_add_(0, labels, duplicate) / counts).numpy()


def target_probabilities(labels: SurrogateLabels, selection: str, duplicates: np.ndarray) -> np.ndarray:
    """Probability of drawing each surrogate label as a generation's target."""
    cohesion = np.array([labels.cohesion[k] for k in labels.kept_cluster_ids])
    if selection == "duplicates":
        weights = duplicates.copy()
    elif selection == "uniform":
        weights = np.ones_like(cohesion)
    elif selection == "weighted":
        weights = cohesion - labels.resolved_cohesion_threshold + 1e-6
    elif selection.startswith("top"):
        keep = max(1, round(float(selection[3:]) * len(cohesion)))
        weights = np.zeros_like(cohesion)
        weights[np.argsort(-cohesion)[:keep]] = 1.0
    else:
        raise ValueError(f"selection {selection!r}: use uniform, weighted, topF or duplicates")
    return weights / weights.sum()


def draw_targets(seeds: list[int], probabilities: np.ndarray) -> torch.Tensor:
    """Each image's target from its own seed (for ``uniform`` the same draw as `image_target`)."""
    return torch.tensor([int(np.random.default_rng(s).choice(len(probabilities), p=probabilities)) for s in seeds])


def sample(pipe: SIDEPipeline, config: dict, seeds: list[int], targets: torch.Tensor, batch_size: int, steps: int,
           exemplars: ExemplarPosterior | None):
    window = None if config["window"][0] == float("-inf") else config["window"]
    images = []
    for start in range(0, len(seeds), batch_size):
        batch = seeds[start : start + batch_size]
        guided = config["scale"] > 0
        images.append(
            pipe(
                batch_size=len(batch),
                target=targets[start : start + batch_size] if guided else None,
                guidance_scale=config["scale"],
                num_inference_steps=steps,
                generator=[torch.Generator().manual_seed(s) for s in batch],
                output_type="pt",
                exemplars=exemplars if config["method"] == "exemplar" else None,
                guidance_window=window,
                guidance_space=config["guidance_space"],
            ).images
        )
    return torch.cat(images)


def wilson(count: int, n: int, z: float = 1.96) -> list[float]:
    p = count / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [p, max(0.0, centre - half), min(1.0, centre + half)]


def bootstrap_distinct(in_band: np.ndarray, best_index: np.ndarray, seed: int) -> list[float]:
    n = len(in_band)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        pick = rng.integers(n, size=n)
        values.append(np.unique(best_index[pick][in_band[pick]]).size / n)
    estimate = np.unique(best_index[in_band]).size / n
    half_width = 1.96 * float(np.std(values, ddof=1))
    return [estimate, max(0.0, estimate - half_width), estimate + half_width]


def score(images: torch.Tensor, reference_rows: torch.Tensor) -> dict:
    rows = (images * 255).round().to(torch.uint8).flatten(1)
    matches = find_best_matches(rows, reference_rows, SIMILARITY, show_progress=False)
    bands = default_bands(SIMILARITY)
    n = len(matches.score)
    result = {"ams": {}, "ums": {}, "curve": {}}
    metrics = extraction_metrics(matches, bands, SIMILARITY)
    assigned = assign_bands(matches.score, bands)
    for position, band in enumerate(bands):
        in_band = assigned == position
        result["ams"][band.name] = wilson(int(in_band.sum()), n)
        result["ums"][band.name] = bootstrap_distinct(in_band, matches.best_index, seed=0)
        result["curve"][band.name] = {
            str(k): int(np.unique(matches.best_index[:k][in_band[:k]]).size) for k in CURVE_POINTS if k <= n
        }
        result["curve"][band.name][str(n)] = int(np.unique(matches.best_index[in_band]).size)
    result["unique_counts"] = metrics["unique_counts"]
    result["counts"] = metrics["counts"]
    result["memorization_ratio"] = metrics["memorization_ratio"]
    result["best_index"] = matches.best_index.tolist()
    result["score"] = [round(float(s), 6) for s in matches.score]
    return result


def load_labelled_synthetic(labels_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = load_image_dataset(str(labels_dir))
    images = images_to_tensor(dataset[find_image_column(dataset)]) * 2 - 1
    return images, torch.tensor(dataset["label"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a `side demo` output folder (synthetic, labels, classifiers); uncond needs none")
    parser.add_argument("--pipeline", default="default", help="the target pipeline (default: embedded)")
    parser.add_argument("--reference", default="default", help="its training set")
    parser.add_argument("--configs", nargs="+", required=True, help="method/sampler/lambda/selection/window ...")
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1, help="run seed: 1 = selection, 2 = report")
    parser.add_argument("--num-inference-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--output", required=True, help="append one JSON line per configuration")
    args = parser.parse_args()
    configs = [parse_config(text) for text in args.configs]
    run = Path(args.run) if args.run else None
    if run is None and any(config["method"] != "uncond" for config in configs):
        parser.error("guided configurations need --run (the labels and classifiers).")
    timings = json.loads((run / "timings.json").read_text()) if run and (run / "timings.json").exists() else {}
    if run is not None:
        labels = SurrogateLabels.load(run / "labels")
        synthetic_images, synthetic_labels = load_labelled_synthetic(run / "labels")
        exemplar = ExemplarPosterior(synthetic_images, synthetic_labels, labels.num_labels)
        classifiers = {name: load_classifier(str(run / f"classifier-{name}")) for name in ("side", "cond")}
        duplicates = duplicate_fraction(synthetic_images, synthetic_labels, labels.num_labels)
    reference = load_image_dataset(args.reference)
    reference_rows = (images_to_tensor(reference[find_image_column(reference)]) * 255).round().to(torch.uint8).flatten(1)
    seeds = [image_seed(args.seed, i) for i in range(args.num_images)]

    for config in configs:
        base = load_pipeline(args.pipeline, None if config["sampler"] == "ddim" else "ddpm")
        guided = config["method"] != "uncond"
        classifier = classifiers[METHOD_CLASSIFIER[config["method"]]] if guided else None
        pipe = SIDEPipeline(base.unet, base.scheduler, classifier)
        pipe.set_progress_bar_config(disable=True)
        targets = draw_targets(seeds, target_probabilities(labels, config["selection"], duplicates)) if guided else None
        started = time.perf_counter()
        images = sample(pipe, config, seeds, targets, args.batch_size, args.num_inference_steps, exemplar if run else None)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            if not guided:
                predicted = None
            elif config["method"] == "exemplar":
                predicted = exemplar.predict(images * 2 - 1, pipe.scheduler.alphas_cumprod[0].double())
            else:
                predicted = classifier(images * 2 - 1, torch.zeros(len(images), dtype=torch.long)).argmax(dim=-1)
        overhead = sum(timings.get(stage, 0.0) for stage in METHOD_STAGES[config["method"]])
        result = {
            "config": config["name"], **{k: v for k, v in config.items() if k != "name"}, "seed": args.seed,
            "num_images": args.num_images, "pipeline": args.pipeline, "reference": args.reference, "run": str(run),
            "hit_rate": float((predicted == targets).float().mean()) if guided else None,
            "num_labels": labels.num_labels if run else None,
            "sampling_seconds": round(seconds, 1), "overhead_seconds": round(overhead, 1),
            **score(images, reference_rows), "machine": machine_info(),
        }
        minutes = (seconds + overhead) / 60
        result["distinct_per_cpu_minute"] = {band: result["unique_counts"][band] / minutes for band in ("high", "mid")}
        cells = [f"{100 * result[kind][band][0]:.1f}" for kind in ("ams", "ums") for band in ("low", "mid", "high")]
        print(f"| {config['name']} | seed {args.seed} | " + " | ".join(cells) + f" | hit {result['hit_rate']} | "
              f"{seconds:.0f}s |", flush=True)
        with open(args.output, "a") as file:
            file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
