"""Benchmark 2: nearest-match search of generations against training images (SIDE step 8).

Searches ``N_G`` generated images against ``N_train`` training images, both flattened 8-bit pixels
(16x16 grayscale, D = 256, and 64x64 RGB, D = 12,288), with:

- ``carlini``: `diffusers_side.similarity.measures.find_best_matches(similarity="carlini")`, the project's chunked
  search with the 50 neighbours Carlini's normalizer needs (what ``side evaluate`` runs by default);
- ``l2``: the same with ``similarity="l2"`` (2 neighbours);
- ``cdist``: ``torch.cdist`` on the full ``N_G x N_train`` float32 matrix, then ``topk`` (only where the
  matrix fits under ``--cdist-max-gib``);
- ``sklearn``: scikit-learn ``NearestNeighbors(algorithm="brute")`` on float32 pixels, 2 neighbours;
- ``matmul``: the ceiling, the float32 matrix product of the same shapes and nothing else, run as the
  ``chunk x chunk`` blocks the chunked search issues (on a sample of blocks when there are many) and,
  where it fits, as one product; the faster gives the ceiling in GFLOP/s.

Efficiency = (2 N_G N_train D / time) / ceiling GFLOP/s; the goal is >= 50 % for the project's search,
with peak memory bounded by the chunk size. Every method runs in its own process, which reports its
time (excluding interpreter start-up and data loading) and its resident-set high-water mark before and
after the search; the data are random 8-bit images written once to a temporary folder.

Usage::

    nice -n 19 python benchmarks/bench_nearest_match.py             # default sizes, a few minutes
    python benchmarks/bench_nearest_match.py --quick                # smoke run
    python benchmarks/bench_nearest_match.py --full                 # 50,000 x 25,000 at both resolutions
    python benchmarks/bench_nearest_match.py --sizes gray16:50000x25000,rgb64:10000x5000
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

GOAL = 0.5
DIMENSIONS = {"gray16": 16 * 16, "rgb64": 64 * 64 * 3}
DEFAULT_SIZES = "gray16:20000x10000,rgb64:1000x25000"
QUICK_SIZES = "gray16:4000x2000,rgb64:500x2000"
FULL_SIZES = "gray16:50000x25000,rgb64:50000x25000"
METHODS = ("carlini", "l2", "cdist", "sklearn", "matmul")
# Modules a child imports before its timed call (imports are neither timed nor counted in the peak).
PRELOAD = {"carlini": "diffusers_side.similarity.measures", "l2": "diffusers_side.similarity.measures", "sklearn": "sklearn.neighbors"}
# The blockwise matmul ceiling times a sample of blocks of about this much work, fastest of a few passes.
CEILING_SAMPLE_GFLOP = 20.0
MIN_CEILING_BLOCKS = 4
CEILING_PASSES = 3


def parse_sizes(text: str, min_train: int) -> list[tuple[str, int, int]]:
    """``"gray16:20000x10000,rgb64:4000x2000"`` -> ``[("gray16", 20000, 10000), ("rgb64", 4000, 2000)]``."""
    sizes = []
    for item in text.split(","):
        try:
            name, shape = item.strip().split(":")
            num_generated, num_train = (int(n) for n in shape.lower().split("x"))
        except ValueError:
            raise ValueError(f"Size {item!r} is not of the form name:N_GxN_train (e.g. gray16:20000x10000).") from None
        if name not in DIMENSIONS or num_generated < 1 or num_train < min_train:
            raise ValueError(f"Size {item!r}: name must be one of {sorted(DIMENSIONS)}, N_G >= 1 and N_train >= {min_train}.")
        sizes.append((name, num_generated, num_train))
    return sizes


def load_inputs(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 generations and training images a child searches (no temporaries beyond the arrays)."""
    return torch.from_numpy(np.load(folder / "generated.npy")), torch.from_numpy(np.load(folder / "train.npy"))


def as_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], as the project's search reads them."""
    return pixels.to(torch.float32).div_(255.0)


def search_project(generated: torch.Tensor, train: torch.Tensor, similarity: str, chunk_size: int) -> np.ndarray:
    from diffusers_side.similarity.measures import find_best_matches

    matches = find_best_matches(generated, train, similarity, chunk_size=chunk_size, show_progress=False)
    return matches.best_index


def search_cdist(generated: torch.Tensor, train: torch.Tensor) -> np.ndarray:
    distances = torch.cdist(as_float(generated), as_float(train))
    return distances.topk(2, dim=1, largest=False).indices[:, 0].numpy()


def search_sklearn(generated: torch.Tensor, train: torch.Tensor) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(as_float(train).numpy())
    return search.kneighbors(as_float(generated).numpy(), return_distance=False)[:, 0]


def matmul_ceiling(generated: torch.Tensor, train: torch.Tensor, chunk_size: int, full_fits: bool) -> dict:
    """Time the float32 products the search needs: chunk-sized blocks, and one full product if it fits.

    The blocks are a sample spread over the problem, about `CEILING_SAMPLE_GFLOP` of work (at least
    `MIN_CEILING_BLOCKS` blocks, at most all of them), timed `CEILING_PASSES` times; the fastest pass counts.

    Returns:
        `dict`: ``{"blocks_timed", "blocks_total", "block": {"flops", "wall_s", "cpu_s"}, "full": {...}}``
        (``"full"`` only when it fits).
    """
    query, keys = as_float(generated), as_float(train)
    dimension = query.shape[1]
    blocks = [(q, k) for q in range(0, len(query), chunk_size) for k in range(0, len(keys), chunk_size)]
    block_gflop = 2 * chunk_size * chunk_size * dimension / 1e9
    count = min(len(blocks), max(MIN_CEILING_BLOCKS, round(CEILING_SAMPLE_GFLOP / block_gflop)))
    blocks_timed = [blocks[i] for i in np.linspace(0, len(blocks) - 1, count).round().astype(int)]
    torch.mm(query[:chunk_size], keys[:chunk_size].T)  # warm-up
    passes = []
    for _ in range(CEILING_PASSES):
        flops = 0
        with Stopwatch() as watch:
            for q, k in blocks_timed:
                block_q, block_k = query[q : q + chunk_size], keys[k : k + chunk_size]
                torch.mm(block_q, block_k.T)
                flops += 2 * len(block_q) * len(block_k) * dimension
        passes.append({"flops": flops, **watch.seconds()})
    fastest = min(passes, key=lambda p: p[f"{ratio_clock()}_s"])
    result = {"blocks_timed": len(blocks_timed), "blocks_total": len(blocks), "block": fastest}
    if full_fits:
        with Stopwatch() as watch:
            torch.mm(query, keys.T)
        result["full"] = {"flops": 2 * len(query) * len(keys) * dimension, **watch.seconds()}
    return result


def child(args: argparse.Namespace) -> None:
    """Child process: load the inputs, run one method, report its wall and CPU time, peak RSS and best indices."""
    folder = Path(args.child_folder)
    generated, train = load_inputs(folder)
    method = args.child_method
    if method in PRELOAD:
        importlib.import_module(PRELOAD[method])
    calls = {
        "carlini": lambda: search_project(generated, train, "carlini", args.chunk_size),
        "l2": lambda: search_project(generated, train, "l2", args.chunk_size),
        "cdist": lambda: search_cdist(generated, train),
        "sklearn": lambda: search_sklearn(generated, train),
        "matmul": lambda: matmul_ceiling(generated, train, args.chunk_size, args.child_full_matmul),
    }
    with Stopwatch() as watch:
        output, memory = measure_peak_rss(calls[method])
    if method == "matmul":
        report_child_result({**output, **memory, **watch.seconds()})
        return
    np.save(folder / f"best-{method}.npy", np.asarray(output, dtype=np.int64))
    report_child_result({**memory, **watch.seconds()})


def measure_size(name: str, num_generated: int, num_train: int, args: argparse.Namespace) -> dict:
    """All methods on one shape, each in a fresh process, in alternating rounds."""
    dimension = DIMENSIONS[name]
    full_bytes = num_generated * num_train * 4
    full_fits = full_bytes <= args.cdist_max_gib * 2**30
    methods = [m for m in METHODS if m in args.methods and (m != "cdist" or full_fits)]
    with tempfile.TemporaryDirectory(prefix="bench-nearest-") as folder:
        rng = np.random.default_rng(0)
        np.save(Path(folder) / "generated.npy", rng.integers(0, 256, (num_generated, dimension), dtype=np.uint8))
        np.save(Path(folder) / "train.npy", rng.integers(0, 256, (num_train, dimension), dtype=np.uint8))
        common = ["--chunk-size", str(args.chunk_size), "--child-folder", folder] + ["--child-full-matmul"] * full_fits
        runs = {method: [] for method in methods}
        for _ in range(args.repeats):
            for method in methods:
                runs[method].append(run_child(Path(__file__), [*common, "--child-method", method]))
        agreement = {}
        reference_best = Path(folder) / "best-l2.npy"
        for method in methods:
            path = Path(folder) / f"best-{method}.npy"
            if method != "l2" and path.exists() and reference_best.exists():
                agreement[method] = float(np.mean(np.load(path) == np.load(reference_best)))
    flops = 2 * num_generated * num_train * dimension
    clock = ratio_clock()
    results = {}
    for method, method_runs in runs.items():
        fastest = min(method_runs, key=lambda run: run[f"{clock}_s"])
        results[method] = {**fastest, "seconds": fastest[f"{clock}_s"], "all_runs": method_runs}
    ceiling = None
    if "matmul" in results:
        matmul = results["matmul"]
        for part in ("block", "full"):
            if part in matmul:
                matmul[f"{part}_gflops"] = matmul[part]["flops"] / matmul[part][f"{clock}_s"] / 1e9
        ceiling = matmul["ceiling_gflops"] = max(matmul["block_gflops"], matmul.get("full_gflops", 0.0))
    for method, result in results.items():
        if method != "matmul":
            result["gflops"] = flops / result["seconds"] / 1e9
            result["efficiency"] = result["gflops"] / ceiling if ceiling else None
            result["top1_agrees_with_l2"] = agreement.get(method)
    return {
        "shape": name,
        "num_generated": num_generated,
        "num_train": num_train,
        "dimension": dimension,
        "chunk_size": args.chunk_size,
        "clock": clock,
        "gflop": flops / 1e9,
        "full_matrix_gib": full_bytes / 2**30,
        "reference_float32_mib": num_train * dimension * 4 / 2**20,
        "methods": results,
    }


def format_results(results: list[dict]) -> str:
    header = [
        "shape", "N_G x N_train", "method", "time s CPU / wall", "GFLOP/s", "% of matmul ceiling", "goal >= 50 %",
        "peak RSS MiB", "peak over inputs MiB", "of which float32 reference MiB", "top-1 = l2",
    ]  # fmt: skip
    rows = []
    for size in results:
        for method, r in size["methods"].items():
            if method == "matmul":
                detail = f"ceiling {r['ceiling_gflops']:.1f} GFLOP/s (blocks {r['block_gflops']:.1f}"
                detail += f", full {r['full_gflops']:.1f})" if "full_gflops" in r else ")"
                timed = f"{r['cpu_s']:.2f} / {r['wall_s']:.2f} ({r['blocks_timed']}/{r['blocks_total']} blocks)"
                cells = [timed, detail, "100", "-"]
            else:
                efficiency = r["efficiency"]
                goal = (
                    "-" if method not in ("carlini", "l2") or efficiency is None else ("met" if efficiency >= GOAL else "MISSED")
                )
                percent = f"{100 * efficiency:.0f}" if efficiency else "-"
                cells = [f"{r['cpu_s']:.2f} / {r['wall_s']:.2f}", f"{r['gflops']:.1f}", percent, goal]
            agree = r.get("top1_agrees_with_l2")
            reference = f"{size['reference_float32_mib']:.0f}" if method in ("carlini", "l2") else "-"
            rows.append([
                size["shape"], f"{size['num_generated']:,} x {size['num_train']:,}", method, *cells,
                f"{r['peak_mib']:.0f}", f"{r['peak_over_before_mib']:.0f}", reference, "-" if agree is None else f"{agree:.4f}",
            ])  # fmt: skip
    return markdown_table(header, rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help=f"shape:N_GxN_train list (default {DEFAULT_SIZES})")
    parser.add_argument("--quick", action="store_true", help=f"smoke run ({QUICK_SIZES})")
    parser.add_argument(
        "--full", action="store_true", help=f"the issue's largest sizes ({FULL_SIZES}); tens of minutes on 2 cores"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--chunk-size", type=int, help="rows per chunk (default: the project's DEFAULT_CHUNK_SIZE, 1024)")
    parser.add_argument("--cdist-max-gib", type=float, default=2.0, help="largest full distance matrix to try (default 2 GiB)")
    parser.add_argument("--repeats", type=int, help="rounds over the methods, the fastest counts (default 1; 2 with --quick)")
    parser.add_argument("--output", help="results JSON (default: benchmarks/results/nearest_match.json)")
    parser.add_argument("--child-method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--child-folder", help=argparse.SUPPRESS)
    parser.add_argument("--child-full-matmul", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk_size is not None and args.chunk_size < 1:
        parser.error(f"--chunk-size must be positive, got {args.chunk_size}.")
    args.methods = [m.strip() for m in args.methods.split(",")]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {','.join(METHODS)}.")
    if args.repeats is None:
        args.repeats = 2 if args.quick else 1
    return args


def main() -> None:
    args = parse_args()
    if args.child_method:
        child(args)
        return
    # Imported here, not at the top: the children that do not run the project's search start faster.
    from diffusers_side.similarity.measures import CARLINI_NUM_NEIGHBORS
    from diffusers_side.similarity.nearest_match import DEFAULT_CHUNK_SIZE

    args.chunk_size = args.chunk_size or DEFAULT_CHUNK_SIZE
    text = args.sizes or (FULL_SIZES if args.full else QUICK_SIZES if args.quick else DEFAULT_SIZES)
    try:
        sizes = parse_sizes(text, min_train=CARLINI_NUM_NEIGHBORS)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    results = [measure_size(name, num_generated, num_train, args) for name, num_generated, num_train in sizes]
    info = machine_info()
    info.update(repeats=args.repeats, chunk_size=args.chunk_size)
    suffix = "_full" if args.full else "_quick" if args.quick else ""
    path = write_results("nearest_match" + suffix, {"machine": info, "results": results}, args.output)
    clock = "process CPU time" if ratio_clock() == "cpu" else "wall time"
    print(machine_line(info) + f"; fastest of {args.repeats} round(s), each method in a fresh process; GFLOP/s on {clock}")
    print(format_results(results))
    print(f"Results: {path}")


if __name__ == "__main__":
    main()
