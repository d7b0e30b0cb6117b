"""Before/after: this checkout's nearest-match search against another checkout's, interleaved in one process.

Separate processes on a shared VM drift by tens of percent (the matmul ceiling itself moved from 114 to
143 GFLOP/s between runs), so a code change to `diffusers_side.similarity.nearest_match.nearest_neighbors` is judged
here: both versions search the same random 8-bit images, alternating, in the same process, and the
fastest of ``--repeats`` process-CPU times of each counts. It also checks that both return the same
neighbours.

Usage::

    git worktree add /tmp/side-before <commit before the change>
    OMP_NUM_THREADS=1 python benchmarks/compare_search.py --before /tmp/side-before --sizes gray16:50000x25000
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch
from bench_common import machine_info, write_results
from bench_nearest_match import DIMENSIONS

import diffusers_side.similarity.nearest_match as after_search


def load_module(path: Path, name: str):
    """Import the search module of another checkout under its own module name."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def timed(module, queries, keys, k: int):
    started = time.process_time()
    scores, indices = module.nearest_neighbors(queries, keys, k, show_progress=False)
    return time.process_time() - started, scores, indices


def compare(before, shape: str, num_queries: int, num_keys: int, k: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    queries = torch.randint(0, 256, (num_queries, DIMENSIONS[shape]), dtype=torch.uint8, generator=generator)
    keys = torch.randint(0, 256, (num_keys, DIMENSIONS[shape]), dtype=torch.uint8, generator=generator)
    times = {"before": [], "after": []}
    for _ in range(repeats):
        seconds, before_scores, before_indices = timed(before, queries, keys, k)
        times["before"].append(seconds)
        seconds, after_scores, after_indices = timed(after_search, queries, keys, k)
        times["after"].append(seconds)
    gflop = 2 * num_queries * num_keys * DIMENSIONS[shape] / 1e9
    best = {name: min(values) for name, values in times.items()}
    return {
        "shape": shape, "num_queries": num_queries, "num_keys": num_keys, "k": k, "cpu_seconds": times,
        "gflops": {name: gflop / seconds for name, seconds in best.items()}, "speedup": best["before"] / best["after"],
        "same_best_two": float((before_indices[:, :2] == after_indices[:, :2]).float().mean()),
        "same_all": float((before_indices == after_indices).float().mean()),
        "max_score_difference": float((before_scores - after_scores).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, type=Path, help="root of the other checkout")
    parser.add_argument("--sizes", default="gray16:50000x25000,rgb64:1000x25000", help="shape:N_GxN_train list")
    parser.add_argument("--neighbors", default="50,2", help="k values: 50 = carlini, 2 = l2 (default: 50,2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", help="results JSON (default: benchmarks/results/compare_search.json)")
    args = parser.parse_args()
    # The search moved: similarity/nearest_match.py (packages by concept), nearest_match.py (the metrics split),
    # metrics.py (before it); the newest one the other checkout has is compared.
    candidates = [args.before / "diffusers_side" / f for f in ("similarity/nearest_match.py", "nearest_match.py", "metrics.py")]
    search_file = next((f for f in candidates if f.exists()), None)
    if search_file is None:
        raise SystemExit(f"--before {args.before}: no diffusers_side search module found (looked for {[str(f) for f in candidates]}).")
    before = load_module(search_file, "metrics_before")
    print("| shape | N_G x N_train | k | before s | after s | speed-up | GFLOP/s before -> after | same best two | same all k |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")
    rows = []
    for item in args.sizes.split(","):
        shape, _, counts = item.partition(":")
        num_queries, num_keys = (int(n) for n in counts.split("x"))
        for k in (int(n) for n in args.neighbors.split(",")):
            row = compare(before, shape, num_queries, num_keys, k, args.repeats)
            rows.append(row)
            print(
                f"| {shape} | {num_queries:,} x {num_keys:,} | {k} | {min(row['cpu_seconds']['before']):.2f} | "
                f"{min(row['cpu_seconds']['after']):.2f} | {row['speedup']:.2f}x | {row['gflops']['before']:.1f} -> "
                f"{row['gflops']['after']:.1f} | {row['same_best_two']:.5f} | {row['same_all']:.5f} |",
                flush=True,
            )
    path = write_results("compare_search", {"machine": machine_info(), "before": str(args.before), "rows": rows}, args.output)
    print(f"Results: {path}")


if __name__ == "__main__":
    main()
