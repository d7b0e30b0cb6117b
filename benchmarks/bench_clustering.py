"""Benchmark 3: clustering the synthetic set into surrogate conditions (SIDE steps 3-5).

At ``N_syn = 50,000`` features of ``d = 512`` (the issue's size) it measures, each in a fresh process:

- ``kmeans``: scikit-learn ``KMeans(n_clusters=100, n_init=10, random_state=0)`` on centred,
  L2-normalised float32 features, exactly as `fit_surrogate_labels` calls it;
- ``kmeans_plusplus``: `sklearn.cluster.kmeans_plusplus` alone, the seeding each of the 10 restarts pays;
- ``kmeans_lloyd``: the Lloyd iterations of one restart alone (``KMeans(init=<k-means++ centres>,
  n_init=1)``, seeded outside the timed call), hence the time per iteration;
- ``fit_surrogate_labels``: the whole of `diffusers_side.labels.surrogate_labels.fit_surrogate_labels`
  (centring, KMeans, cohesion filter with ``tau="auto"``, relabelling);
- ``matmul``: the float32 product ``(N_syn, d) x (d, K)``, the bulk of one Lloyd iteration, as a
  throughput reference (KMeans GFLOP/s counts ``2 N_syn d K`` per iteration).

Time excludes interpreter start-up and data loading; peak memory is the process's RSS high-water mark
during the call, over its RSS before. The features are a seeded Gaussian mixture (100 components with
spreads from tight to diffuse, a stand-in for image features): the number of Lloyd iterations depends
on the data, so per-iteration times transfer better than totals.

Usage::

    nice -n 19 python benchmarks/bench_clustering.py          # N_syn = 50,000, d = 512
    python benchmarks/bench_clustering.py --quick             # N_syn = 5,000, d = 128
    python benchmarks/bench_clustering.py --num-synthetic 100000 --dimension 768
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_common import (
    Stopwatch,
    machine_info,
    machine_line,
    markdown_table,
    measure_peak_rss,
    ratio_clock,
    report_child_result,
    run_child,
    write_results,
)

METHODS = ("kmeans", "kmeans_plusplus", "kmeans_lloyd", "fit_surrogate_labels", "matmul")
NUM_COMPONENTS = 100
# Modules a child imports before its timed call (imports are neither timed nor counted in the peak).
PRELOAD = {
    "kmeans": "sklearn.cluster",
    "kmeans_lloyd": "sklearn.cluster",
    "kmeans_plusplus": "sklearn.cluster",
    "fit_surrogate_labels": "diffusers_side.labels.surrogate_labels",
}


def make_features(num_synthetic: int, dimension: int, seed: int = 0) -> np.ndarray:
    """A Gaussian mixture: `NUM_COMPONENTS` random centres, per-component spreads log-uniform in [0.25, 4].

    Spreads run from clusters much tighter than the distance between centres (memorized modes) to
    clusters wider than it, which overlap: KMeans needs tens of Lloyd iterations, as on image features.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((NUM_COMPONENTS, dimension)).astype(np.float32)
    spreads = np.exp(rng.uniform(np.log(0.25), np.log(4.0), NUM_COMPONENTS)).astype(np.float32)
    components = rng.integers(0, NUM_COMPONENTS, num_synthetic)
    noise = rng.standard_normal((num_synthetic, dimension), dtype=np.float32)
    return centres[components] + spreads[components, None] * noise


def centred_normalised(features: torch.Tensor) -> np.ndarray:
    """What `fit_surrogate_labels` hands to KMeans: features centred on their mean, then L2-normalised."""
    return torch.nn.functional.normalize(features - features.mean(dim=0), dim=1).numpy()


def run_kmeans(features: torch.Tensor, num_clusters: int, n_init: int) -> dict:
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=num_clusters, n_init=n_init, random_state=0).fit(centred_normalised(features))
    return {"n_iter": int(kmeans.n_iter_), "inertia": float(kmeans.inertia_)}


def run_kmeans_plusplus(features: torch.Tensor, num_clusters: int) -> dict:
    from sklearn.cluster import kmeans_plusplus

    kmeans_plusplus(centred_normalised(features), n_clusters=num_clusters, random_state=0)
    return {}


def lloyd_call(features: torch.Tensor, num_clusters: int):
    """Seed with k-means++ now (untimed) and return the call that runs one restart's Lloyd iterations."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    data = centred_normalised(features)
    centres, _ = kmeans_plusplus(data, n_clusters=num_clusters, random_state=0)

    def fit() -> dict:
        kmeans = KMeans(n_clusters=num_clusters, init=centres, n_init=1).fit(data)
        return {"n_iter": int(kmeans.n_iter_), "inertia": float(kmeans.inertia_)}

    return fit


def run_fit_surrogate_labels(features: torch.Tensor, num_clusters: int) -> dict:
    from diffusers_side.labels.surrogate_labels import fit_surrogate_labels

    labels = fit_surrogate_labels(features, num_clusters=num_clusters, cohesion="auto", seed=0)
    return {"num_labels": labels.num_labels, "threshold": labels.resolved_cohesion_threshold}


def run_matmul(features: torch.Tensor, num_clusters: int, repeats: int = 5) -> dict:
    centres = features[:num_clusters].T.contiguous()
    torch.mm(features, centres)  # warm-up
    with Stopwatch() as watch:
        for _ in range(repeats):
            torch.mm(features, centres)
    seconds = watch.seconds()[f"{ratio_clock()}_s"] / repeats
    return {"gflops": 2 * features.shape[0] * features.shape[1] * num_clusters / seconds / 1e9}


def child(args: argparse.Namespace) -> None:
    """Child process: load the features, run one method, report its time and peak RSS."""
    features = torch.from_numpy(np.load(Path(args.child_folder) / "features.npy"))
    if args.child_method in PRELOAD:
        importlib.import_module(PRELOAD[args.child_method])
    if args.child_method == "kmeans_lloyd":
        call = lloyd_call(features, args.clusters)  # seeds first, untimed
    else:
        call = {
            "kmeans": lambda: run_kmeans(features, args.clusters, n_init=10),
            "kmeans_plusplus": lambda: run_kmeans_plusplus(features, args.clusters),
            "fit_surrogate_labels": lambda: run_fit_surrogate_labels(features, args.clusters),
            "matmul": lambda: run_matmul(features, args.clusters),
        }[args.child_method]
    with Stopwatch() as watch:
        output, memory = measure_peak_rss(call)
    times = watch.seconds()
    report_child_result({**output, **memory, **times, "seconds": times[f"{ratio_clock()}_s"]})


def format_results(result: dict) -> str:
    size = f"{result['num_synthetic']:,} x {result['dimension']}, K = {result['clusters']}"
    header = [
        "N_syn x d, K",
        "method",
        "time s CPU / wall",
        "Lloyd iterations",
        "s / Lloyd iteration",
        "GFLOP/s",
        "peak RSS MiB",
        "peak over inputs MiB",
    ]
    rows = []
    for method, r in result["methods"].items():
        iterations = r.get("n_iter")
        per_iteration = r.get("lloyd_s_per_iteration")
        rows.append([
            size, method, f"{r['cpu_s']:.2f} / {r['wall_s']:.2f}", "-" if iterations is None else iterations,
            "-" if per_iteration is None else f"{1e3 * per_iteration:.1f} ms",
            f"{r['gflops']:.1f}" if r.get("gflops") else "-", f"{r['peak_mib']:.0f}", f"{r['peak_over_before_mib']:.0f}",
        ])  # fmt: skip
    return markdown_table(header, rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-synthetic", type=int, help="N_syn (default 50,000; 5,000 with --quick)")
    parser.add_argument("--dimension", type=int, help="feature dimension d (default 512; 128 with --quick)")
    parser.add_argument("--clusters", type=int, default=100, help="K (default 100, the paper's)")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--output", help="results JSON (default: benchmarks/results/clustering.json)")
    parser.add_argument("--child-method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--child-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.num_synthetic = args.num_synthetic or (5_000 if args.quick else 50_000)
    args.dimension = args.dimension or (128 if args.quick else 512)
    if args.num_synthetic < args.clusters or args.dimension < 1 or args.clusters < 2:
        parser.error(
            f"Need --clusters >= 2, --num-synthetic >= --clusters and --dimension >= 1; "
            f"got {args.clusters}, {args.num_synthetic}, {args.dimension}."
        )
    args.methods = [m.strip() for m in args.methods.split(",")]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {','.join(METHODS)}.")
    return args


def main() -> None:
    args = parse_args()
    if args.child_method:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-clustering-") as folder:
        np.save(Path(folder) / "features.npy", make_features(args.num_synthetic, args.dimension))
        common = ["--clusters", str(args.clusters), "--child-folder", folder]
        methods = {m: run_child(Path(__file__), [*common, "--child-method", m]) for m in METHODS if m in args.methods}
    flop_per_iteration = 2 * args.num_synthetic * args.dimension * args.clusters
    if "kmeans_lloyd" in methods:
        lloyd = methods["kmeans_lloyd"]
        lloyd["lloyd_s_per_iteration"] = lloyd["seconds"] / lloyd["n_iter"]
        lloyd["gflops"] = flop_per_iteration / lloyd["lloyd_s_per_iteration"] / 1e9
    result = {"num_synthetic": args.num_synthetic, "dimension": args.dimension, "clusters": args.clusters, "methods": methods}
    info = machine_info()
    path = write_results("clustering" + ("_quick" if args.quick else ""), {"machine": info, "results": result}, args.output)
    clock = "process CPU time" if ratio_clock() == "cpu" else "wall time"
    print(machine_line(info) + f"; each method in a fresh process, one run; per-iteration times and GFLOP/s on {clock}")
    print(format_results(result))
    print(f"Results: {path}")


if __name__ == "__main__":
    main()
