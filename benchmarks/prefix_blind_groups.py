"""Not a speed benchmark: the blind near-duplicate groups among the first N generations of each folder of a study phase.

A study's selection rule reads blind groups (`diffusers_side.candidates.ranking.rank_candidates`, no training image
read). The candidate list `side study` writes beside a folder covers all of its generations, and the plain-sampling
baseline holds more of them than the configurations it is compared with (it is extended to their budget); groups
grow with the number of generations, so a rule that compares folders compares them on their first N generations
(image-index order: a prefix is exactly the smaller run). Writes ``{"rule", "num_generations", "groups": {folder:
count}}``.

Usage (the restart rule; docs/attacker-study.md, "Restart sampling")::

    side study docs/studies/digits-rare-restart.json --phase selection --output runs/restart
    python benchmarks/prefix_blind_groups.py --phase-dir runs/restart/selection --num-generations 300 \\
        --output benchmarks/results/attacker-study/restart-selection/blind_groups.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from diffusers_side.candidates.files import pixel_rows
from diffusers_side.candidates.ranking import rank_candidates
from diffusers_side.storage.data import find_image_column, load_image_dataset
from diffusers_side.storage.generation_folder import is_generation_folder

RULE = "blind near-duplicate groups (size >= 2) among the first N generations of each folder, in image-index order"


def prefix_groups(folder: Path, num_generations: int) -> int:
    """Blind groups of size >= 2 among the first ``num_generations`` generations of a generation folder."""
    data = load_image_dataset(str(folder))
    order = np.argsort(np.asarray(data["index"]), kind="stable")[:num_generations]
    data = data.select(order.tolist())
    ranked = rank_candidates(pixel_rows(data, find_image_column(data)))
    return int((np.asarray(ranked.group_size) > 1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-dir", type=Path, required=True, help="a study phase folder (OUTPUT/selection)")
    parser.add_argument("--num-generations", type=int, default=300, help="N: the prefix compared (default 300)")
    parser.add_argument("--output", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args()
    folders = sorted(p for p in args.phase_dir.iterdir() if is_generation_folder(p))
    if not folders:
        raise SystemExit(f"{args.phase_dir} holds no generation folder; pass a study phase folder such as OUTPUT/selection.")
    groups = {folder.name: prefix_groups(folder, args.num_generations) for folder in folders}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"rule": RULE, "num_generations": args.num_generations, "groups": groups}, indent=1) + "\n")
    for name, count in groups.items():
        print(f"{name}: {count} blind groups among the first {args.num_generations}")


if __name__ == "__main__":
    main()
