"""Fault injection: long commands killed with SIGKILL at random points, then resumed, equal an uninterrupted run.

`side synthesize` is killed twice while it writes its shards (after a random number of them, plus a random delay)
and run again until it finishes; `side label` is killed while it replaces an earlier output folder. The resumed
result is compared with a run that was never interrupted, row by row and pixel by pixel; a killed `side label`
leaves the previous output or the new one, whole, never a mixture. The kill points are drawn from a seeded generator (its
seed is in every assertion message), so a failure can be replayed.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from test_reliability import save_ddpm, smooth_images

from conftest import subprocess_env, write_generation_dir
from diffusers_side.cli import main as side
from diffusers_side.storage.data import load_image_dataset

SEED = int(os.environ.get("SIDE_FAULT_SEED", "21"))
NUM_IMAGES, BATCH = 12, 2  # 6 shards


def start(argv: list) -> subprocess.Popen:
    command = [sys.executable, "-m", "diffusers_side", *map(str, argv)]
    return subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def kill_when(process: subprocess.Popen, ready, delay: float, timeout: float = 120) -> bool:
    """SIGKILL ``process`` ``delay`` seconds after ``ready()`` holds; ``False`` if it finished first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the command never reached the kill point")
        time.sleep(0.02)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return True


def rows(folder: Path) -> list[tuple]:
    dataset = load_image_dataset(folder)
    return [
        (row["index"], row["seed"], row["method"], row["target"], np.asarray(row["image"]).tobytes())
        for row in dataset.sort("index")
    ]


def test_synthesize_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path, single_thread, capsys):
    rng = random.Random(SEED)
    model = save_ddpm(tmp_path / "model")
    argv = ["synthesize", "--pipeline", model, "--num-samples", NUM_IMAGES, "--batch-size", BATCH, "--num-inference-steps", "8"]
    assert side([str(a) for a in [*argv, "--output", tmp_path / "reference"]]) == 0  # never interrupted
    capsys.readouterr()

    output = tmp_path / "killed"
    shards = output / "shards"
    kills = []
    for _ in range(2):
        after = rng.randrange(NUM_IMAGES // BATCH - 1)  # shards written before the kill (0: during the first)
        delay = rng.uniform(0, 0.3)
        process = start([*argv, "--output", output])
        ready = lambda: (output / "generation.json").is_file() and len(list(shards.glob("*.parquet"))) >= after  # noqa: E731
        kills.append((after, round(delay, 3), kill_when(process, ready, delay)))
    assert side([str(a) for a in [*argv, "--output", output]]) == 0, f"seed {SEED}, kills {kills}"  # resumes
    assert rows(output) == rows(tmp_path / "reference"), f"seed {SEED}, kills {kills}"
    assert sorted(p.name for p in shards.glob("*.parquet")) == sorted(p.name for p in (tmp_path / "reference" / "shards").glob("*.parquet"))


def label_outputs(folder: Path) -> tuple:
    dataset = load_image_dataset(folder)
    sidecar = json.loads((folder / "surrogate_labels.json").read_text())
    return dataset["label"], [np.asarray(image).tobytes() for image in dataset["image"]], sidecar


def test_label_killed_while_replacing_its_output_leaves_it_whole_and_reruns_to_the_same_result(tmp_path, single_thread, capsys):
    rng = random.Random(SEED)
    synthetic = write_generation_dir(tmp_path / "synthetic", smooth_images(24))
    argv = ["label", "--synthetic", synthetic, "--features", "pixels", "--clusters", "4", "--cohesion", "-1"]
    assert side([str(a) for a in [*argv, "--output", tmp_path / "reference"]]) == 0
    capsys.readouterr()

    output, expected = tmp_path / "labels", label_outputs(tmp_path / "reference")
    assert side([str(a) for a in [*argv, "--output", output]]) == 0  # the output the killed re-run replaces
    delay = rng.uniform(0, 0.05)
    staging = lambda: any(p.name.startswith(".labels.tmp-") for p in tmp_path.iterdir())  # noqa: E731
    killed = kill_when(start([*argv, "--output", output]), staging, delay)
    # whole or absent, never a mixture: the earlier output (identical, same arguments) or the new one; between the two
    # renames of the swap, the earlier one set aside for the next run to put back
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".labels.old-")]
    context = f"seed {SEED}, delay {delay:.3f}, killed {killed}"
    if output.exists():
        assert label_outputs(output) == expected, context
    else:
        assert len(aside) == 1, context
    assert side([str(a) for a in [*argv, "--output", output]]) == 0  # the re-run clears the killed run's staging folder
    assert label_outputs(output) == expected
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
