"""Helpers shared by the benchmark scripts: machine description, interleaved timing, peak memory, results.

Timing: every measured callable runs once per *round*, rounds alternate between the callables, and the
fastest round is reported, so slow drift on a shared machine hits all of them alike (ratios measured in
one run are what to compare across machines). Both wall time and process CPU time are recorded;
ratios use CPU time in single-threaded CPU runs (see `ratio_clock`), wall time otherwise.

Peak memory on the CPU is the resident-set high-water mark (``VmHWM``, what ``/usr/bin/time -v`` reports
as "Maximum resident set size") of a fresh process per measurement: the child loads its inputs, resets
the mark to its current RSS (Linux ``/proc/self/clear_refs``), runs the measured call, and reports its
RSS before and the mark after; the difference is what the call itself needed. Where the reset is not
available the mark covers the whole process (``ru_maxrss``) and the difference is a lower bound. On
CUDA it is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).parent / "results"
CHILD_MARKER = "BENCH-RESULT "


def machine_info(device: str = "cpu") -> dict:
    """CPU model, cores, RAM, library versions, thread count, load and date: the context of a result."""
    import diffusers
    import sklearn

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(_mem_total_kib() / 2**20, 1),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "niceness": os.nice(0),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "scikit-learn": sklearn.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_model() -> str:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _mem_total_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


def synchronize(device: str) -> None:
    """Wait for queued GPU work so that wall-clock times are complete."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def ratio_clock(device: str = "cpu") -> str:
    """The clock that ratios are taken on: ``"cpu"`` for single-threaded CPU runs, else ``"wall"``.

    On a shared machine a process that waits for a core accumulates wall time but not CPU time
    (`time.process_time`), so with one thread CPU time measures the work itself, whatever the other
    users do. With several threads, or on a GPU, only wall time says how long the work takes.
    """
    return "cpu" if device == "cpu" and torch.get_num_threads() == 1 else "wall"


class Stopwatch:
    """Wall (`time.perf_counter`) and process CPU (`time.process_time`) seconds of a ``with`` block.

    Example:

    ```py
    >>> with Stopwatch() as watch:
    ...     sum(range(10**6))
    >>> watch.seconds()  # {"wall_s": ..., "cpu_s": ...}
    ```
    """

    def __init__(self, device: str = "cpu"):
        self.device = device

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info) -> None:
        synchronize(self.device)
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu

    def seconds(self) -> dict:
        return {"wall_s": self.wall, "cpu_s": self.cpu}


def time_interleaved(calls: dict[str, Callable[[], object]], repeats: int, warmup: int, device: str = "cpu") -> dict:
    """Minimum and median wall and CPU time (seconds) of each callable, measured in alternating rounds.

    Args:
        calls: name -> zero-argument callable.
        repeats: timed rounds; each round calls every callable once.
        warmup: untimed rounds first (allocator, oneDNN primitive caches, `torch.compile`).
        device: the device to synchronize before reading the clocks.

    Returns:
        `dict`: name -> ``{"wall": {"min_s", "median_s", "times_s"}, "cpu": {...}}``.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times = {name: {"wall": [], "cpu": []} for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            with Stopwatch(device) as watch:
                call()
            times[name]["wall"].append(watch.wall)
            times[name]["cpu"].append(watch.cpu)
    return {
        name: {
            clock: {"min_s": min(values), "median_s": statistics.median(values), "times_s": [round(v, 6) for v in values]}
            for clock, values in clocks.items()
        }
        for name, clocks in times.items()
    }


def _proc_status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def start_peak_rss() -> float:
    """Reset the RSS high-water mark to the current RSS where Linux allows it; return the current RSS in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass
    current = _proc_status_mib("VmRSS")
    return current if current is not None else peak_rss_mib()


def peak_rss_mib() -> float:
    """The RSS high-water mark in MiB (since `start_peak_rss`, or since the process started)."""
    peak = _proc_status_mib("VmHWM")
    # `ru_maxrss` is in KiB on Linux.
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_peak_rss(call: Callable[[], object]) -> tuple[object, dict]:
    """Run `call` and return its result and ``{"rss_before_mib", "peak_mib", "peak_over_before_mib"}``."""
    before = start_peak_rss()
    result = call()
    peak = peak_rss_mib()
    return result, {"rss_before_mib": before, "peak_mib": peak, "peak_over_before_mib": peak - before}


def report_child_result(result: dict) -> None:
    """Print a child's result as the one line `run_child` looks for."""
    print(CHILD_MARKER + json.dumps(result), flush=True)


def run_child(script: str | os.PathLike, arguments: list[str]) -> dict:
    """Run ``python script arguments`` in a fresh process and return the result it reported.

    The child inherits this process's environment (threads, niceness) and reports with
    `report_child_result`; its stderr (progress bars, warnings) passes through.
    """
    completed = subprocess.run([sys.executable, str(script), *arguments], stdout=subprocess.PIPE, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(CHILD_MARKER)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"Child {script} {' '.join(arguments)} failed (exit code {completed.returncode}).")
    return json.loads(lines[-1][len(CHILD_MARKER) :])


def write_results(name: str, results: dict, path: str | os.PathLike | None = None) -> Path:
    """Write ``results`` as JSON (atomically) to `path` or ``benchmarks/results/<name>.json``."""
    path = Path(path) if path is not None else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: dict) -> str:
    """One line naming the machine and the run conditions, printed above every table."""
    line = (
        f"{info['date']}: {info['cpu']}, {info['cores_available']} cores, {info['ram_gib']} GiB RAM, "
        f"torch {info['torch']} ({info['torch_threads']} threads), diffusers {info['diffusers']}, "
        f"scikit-learn {info['scikit-learn']}, nice {info['niceness']}, load {info['load_average_1min_at_start']}"
    )
    return line + (f", GPU {info['gpu']}" if "gpu" in info else "")
