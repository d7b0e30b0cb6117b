"""Query-only SIDE study: AMS / UMS against the number of queries, beside plain sampling at the same number of queries.

The threat model of the SIDE paper's App. E: the auditor can only send initial noises to a generation API and
receive images. Here the API is the target's own 50-step DDIM sampler (eta 0: the image is a deterministic
function of the noise), wrapped by `diffusers_side.audits.query_only.PipelineBlackBox`; every image is one query.

Stages (each resumable):

- ``prepare``: the demo's first stages (`diffusers_side.demo.Demo`) on the target: N_syn unguided samples drawn
  through the same API (run seed 0), surrogate labels, the time-dependent classifier. Trained on the synthetic
  set only.
- ``run``: for one run seed, plain sampling (query ``i`` = noise `image_seed(seed, i, "extraction")`, as ``side
  extract``) and
  each query-only configuration at every budget Q. A configuration ``B/order`` searches ``T = Q / B`` targets
  with ``B`` queries each (CMA-ES, `query_only_search`), taking the kept clusters by decreasing cohesion
  (``cohesion``, training-data-free) or in a seeded random order (``random``). With the per-target seeds of
  `query_only_search`, the run at Q is exactly the first T targets of the run at the largest Q, so one search per
  configuration gives every point of its curve (asserted on the first budget).
- ``report``: the table (markdown) and the curve (PNG; no training image is drawn).

Scoring: normalized L2 (Carlini et al.) against the target's training set, the library's default bands, every
query's image counted as a generation (AMS = in-band generations / Q, UMS = distinct training images whose best
match is in the band / Q); AMS with 95 % Wilson intervals, UMS +- 1.96 bootstrap standard errors (1,000 resamples),
from `diffusers_side.evaluation.intervals` as ``side study``. Also scored: the returned candidates alone (the best 5
queries per target). Every row keeps each generation's best match and score, so other cuts need no rerun.

Protocol: settings (B, order) are chosen on selection seed 1 by AMS mid + high over all queries at the largest Q;
the chosen setting and plain sampling are then run once on report seed 2. Nothing is chosen on seed 2.

Usage (the commands of docs/query_only.md; outputs outside git)::

    python benchmarks/query_only_study.py prepare --run outputs/queryonly/demo-rare-ddim
    python benchmarks/query_only_study.py run --run outputs/queryonly/demo-rare-ddim --seed 1 --budgets 250 500 1000 \\
        --plain-extra 2000 --configs 125/cohesion 50/cohesion 250/cohesion --output outputs/queryonly/select.jsonl
    python benchmarks/query_only_study.py run --run outputs/queryonly/demo-rare-ddim --seed 2 --budgets 250 500 1000 2000 \\
        --plain-extra 3000 --configs 250/cohesion 50/cohesion --output outputs/queryonly/report.jsonl
    python benchmarks/query_only_study.py report --inputs outputs/queryonly/report.jsonl --figure docs/figures/query_only.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffusers_side.audits.query_only import ClassifierFitness, PipelineBlackBox, plain_noises, query_only_search
from diffusers_side.evaluation.bands import assign_bands, default_bands
from diffusers_side.evaluation.intervals import distinct_interval, wilson_interval
from diffusers_side.labels.surrogate_labels import SurrogateLabels
from diffusers_side.pipelines.loading import load_classifier, load_pipeline
from diffusers_side.similarity.measures import find_best_matches
from diffusers_side.storage.data import find_image_column, images_to_tensor, load_image_dataset

TARGET = "digits-rare"
SIMILARITY = "carlini"
BUDGETS = (250, 500, 1000, 2000)
NUM_BEST = 5
STEPS = 50


def prepare(run: Path, quick: bool = False) -> None:
    """The demo's synthesis, labelling and SIDE classifier, through the API's own sampler (DDIM), run seed 0.

    ``quick``: the demo's ``QUICK`` sizes (48 images, 4 clusters, an 8-step classifier), a smoke run only."""
    from dataclasses import asdict

    from diffusers_side.utils.atomic_io import write_json_atomic
    from diffusers_side.workflows.demo import CONFIG_FILE, Demo, resolve_config

    demo = Demo(run, resolve_config(None, quick=quick, pipeline=TARGET, reference=TARGET, scheduler="ddim"))
    demo.check()
    run.mkdir(parents=True, exist_ok=True)
    write_json_atomic(demo.path(CONFIG_FILE), asdict(demo.config))  # lets `Demo.check` recognise the folder on resume
    demo.stage("synthesize", demo.path("synthetic"), demo.synthesize)
    if not (demo.path("labels") / "surrogate_labels.json").exists():
        demo.stage("label", demo.path("labels"), demo.label)
    if not (demo.path("classifier-side") / "model_index.json").exists():
        demo.stage("train classifier-side", demo.path("classifier-side"), lambda: demo.train_classifier("classifier-side", False))
    print(json.dumps(demo.timings))


def target_order(labels: SurrogateLabels, order: str, seed: int) -> list[int]:
    """Kept labels by decreasing cohesion, or in a random order drawn from ``seed``."""
    if order == "cohesion":
        cohesion = [labels.cohesion[k] for k in labels.kept_cluster_ids]
        return sorted(range(labels.num_labels), key=lambda label: (-cohesion[label], label))
    if order == "random":
        return np.random.default_rng([seed, 7]).permutation(labels.num_labels).tolist()
    raise ValueError(f"target order {order!r} is not 'cohesion' or 'random'.")


def score(images: torch.Tensor, reference_rows: torch.Tensor) -> dict:
    """AMS (Wilson) and UMS (bootstrap) per band of a set of generations."""
    rows = (images * 255).round().to(torch.uint8).flatten(1)
    matches = find_best_matches(rows, reference_rows, SIMILARITY, show_progress=False)
    assigned = assign_bands(matches.score, default_bands(SIMILARITY))
    result = {"n": len(rows), "ams": {}, "ums": {}, "unique": {}, "best_index": matches.best_index.tolist(),
              "score": [round(float(value), 5) for value in matches.score]}
    for position, band in enumerate(default_bands(SIMILARITY)):
        in_band = assigned == position
        result["ams"][band.name] = wilson_interval(int(in_band.sum()), len(rows))
        result["ums"][band.name] = distinct_interval(in_band, matches.best_index)
        result["unique"][band.name] = int(np.unique(matches.best_index[in_band]).size)
    return result


def hit_rate(classifier, images: torch.Tensor, targets: torch.Tensor) -> float:
    """The fraction of images the classifier assigns (argmax at t = 0) to their target."""
    with torch.inference_mode():
        predicted = classifier.eval()(images * 2 - 1, torch.zeros(len(images), dtype=torch.long)).argmax(dim=-1)
    return float((predicted == targets).float().mean())


def done_keys(path: Path) -> set:
    if not path.exists():
        return set()
    return {(row["config"], row["seed"], row["budget"]) for row in map(json.loads, path.read_text().splitlines())}


def run_plain(generate, seed: int, budgets, reference_rows) -> list[dict]:
    started = time.perf_counter()
    images = generate(plain_noises(max(budgets), generate.noise_shape, seed))
    seconds = time.perf_counter() - started
    return [{"config": "plain", "budget": q, "all": score(images[:q], reference_rows), "seconds": seconds * q / max(budgets)}
            for q in budgets]


def run_search(generate, fitness, labels, config: str, seed: int, budgets, reference_rows) -> list[dict]:
    per_target, order = config.split("/")
    per_target = int(per_target)
    if any(q % per_target for q in budgets):
        raise ValueError(f"every budget {budgets} must be a multiple of the per-target budget {per_target}.")
    targets = target_order(labels, order, seed)[: max(budgets) // per_target]
    started = time.perf_counter()
    result = query_only_search(generate, fitness, targets, max(budgets), generate.noise_shape, seed=seed, num_best=NUM_BEST)
    seconds = time.perf_counter() - started
    first = query_only_search(generate, fitness, targets[: budgets[0] // per_target], budgets[0], generate.noise_shape,
                              seed=seed, keep_images=False)
    assert torch.equal(first.noises, result.noises[: budgets[0]]), "the nested-budget property does not hold"
    rows = []
    for q in budgets:
        best = result.best_indices[result.best_indices < q]
        first_generation = result.fitness[:q][result.generation[:q] == 0]
        rows.append({
            "config": f"query-only {config}", "budget": q, "num_targets": q // per_target,
            "all": score(result.images[:q], reference_rows), "returned": score(result.images[best], reference_rows),
            "hit_rate": hit_rate(fitness.classifier, result.images[:q], result.targets[:q]),
            "fitness_first_generation": float(first_generation.mean()), "fitness_all": float(result.fitness[:q].mean()),
            "fitness_returned": float(result.fitness[best].mean()), "seconds": seconds * q / max(budgets),
        })
    return rows


def run(args) -> None:
    output = Path(args.output)
    budgets = sorted(args.budgets)
    pipe = load_pipeline(TARGET)  # the API: the target's saved 50-step DDIM sampler, eta 0
    generate = PipelineBlackBox(pipe, num_inference_steps=STEPS, batch_size=100)
    reference = load_image_dataset(TARGET)
    reference_rows = (images_to_tensor(reference[find_image_column(reference)]) * 255).round().to(torch.uint8).flatten(1)
    labels = SurrogateLabels.load(Path(args.run) / "labels")
    fitness = ClassifierFitness(load_classifier(str(Path(args.run) / "classifier-side")))
    done = done_keys(output)
    for config in ["plain", *args.configs]:
        name = config if config == "plain" else f"query-only {config}"
        if all((name, args.seed, q) in done for q in budgets):
            continue
        if config == "plain":
            rows = run_plain(generate, args.seed, [*budgets, *args.plain_extra], reference_rows)
        else:
            rows = run_search(generate, fitness, labels, config, args.seed, budgets, reference_rows)
        with output.open("a") as file:
            for row in rows:
                file.write(json.dumps({**row, "seed": args.seed, "run": args.run, "target": TARGET, "steps": STEPS}) + "\n")
        for row in rows:
            cells = " | ".join(f"{100 * row['all'][k][b][0]:.2f}" for k in ("ams", "ums") for b in ("mid", "high"))
            print(f"| {row['config']} | {args.seed} | {row['budget']} | {cells} |", flush=True)


def cell(interval: list[float]) -> str:
    return f"{100 * interval[0]:.2f} [{100 * interval[1]:.2f}, {100 * interval[2]:.2f}]"


def table(rows: list[dict], part: str = "all") -> str:
    lines = ["| method | seed | queries Q | N scored | AMS mid (%) | AMS high (%) | UMS mid (%) | UMS high (%) | distinct mid / high |",
             "|---|---:|---:|---:|---|---|---|---|---:|"]
    for row in rows:
        if part not in row:
            continue
        s = row[part]
        lines.append(f"| {row['config']} | {row['seed']} | {row['budget']} | {s['n']} | " + " | ".join(
            cell(s[k][b]) for k in ("ams", "ums") for b in ("mid", "high")) + f" | {s['unique']['mid']} / {s['unique']['high']} |")
    return "\n".join(lines)


def plot(rows: list[dict], seed: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for config in dict.fromkeys(r["config"] for r in rows if r["seed"] == seed):
        series = sorted((r for r in rows if r["config"] == config and r["seed"] == seed), key=lambda r: r["budget"])
        q = [r["budget"] for r in series]
        for axis, (kind, band) in zip(axes, [(k, b) for k in ("ams", "ums") for b in ("mid", "high")]):
            values = np.array([r["all"][kind][band] for r in series]) * 100
            axis.plot(q, values[:, 0], marker="o", label=config)
            axis.fill_between(q, values[:, 1], values[:, 2], alpha=0.15)
            axis.set(title=f"{kind.upper()} {band} (%)", xlabel="queries Q", xscale="log")
    ticks = sorted({r["budget"] for r in rows if r["seed"] == seed})
    for axis in axes:
        axis.minorticks_off()
        axis.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{TARGET}: query-only SIDE vs plain sampling, every query counted (seed {seed}, 95 % intervals)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def report(args) -> None:
    rows = [json.loads(line) for path in args.inputs for line in Path(path).read_text().splitlines()]
    rows.sort(key=lambda r: (r["seed"], r["budget"], r["config"] != "plain", r["config"]))
    print("Every query counted:\n\n" + table(rows) + "\n\nReturned candidates only (best 5 per target):\n\n"
          + table(rows, "returned"))
    print("\n| method | seed | Q | mean fitness: first generation / all queries / returned | hit rate (%) | wall s (shared 2-core machine) |")
    print("|---|---:|---:|---|---:|---:|")
    for r in rows:
        if "hit_rate" in r:
            print(f"| {r['config']} | {r['seed']} | {r['budget']} | {r['fitness_first_generation']:.2f} / {r['fitness_all']:.2f} / "
                  f"{r['fitness_returned']:.2f} | {100 * r['hit_rate']:.1f} | {r['seconds']:.0f} |")
    if args.figure:
        plot(rows, args.figure_seed, Path(args.figure))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--run", required=True, help="output folder of the demo stages")
    p.add_argument("--quick", action="store_true", help="the demo's smoke-test sizes (tests only)")
    r = sub.add_parser("run")
    r.add_argument("--run", required=True, help="the folder `prepare` wrote (labels, classifier-side)")
    r.add_argument("--seed", type=int, required=True, help="1 = selection, 2 = report")
    r.add_argument("--configs", nargs="*", default=["125/cohesion"], help="per-target budget / target order")
    r.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    r.add_argument("--plain-extra", type=int, nargs="*", default=[3000], help="extra plain-sampling points")
    r.add_argument("--output", required=True, help="JSON lines, appended (a finished configuration is skipped)")
    o = sub.add_parser("report")
    o.add_argument("--inputs", nargs="+", required=True)
    o.add_argument("--figure", help="PNG of the curves (no image of the training set is drawn)")
    o.add_argument("--figure-seed", type=int, default=2)
    args = parser.parse_args()
    if args.stage == "prepare":
        prepare(Path(args.run), args.quick)
    elif args.stage == "run":
        run(args)
    else:
        report(args)


if __name__ == "__main__":
    sys.exit(main())
