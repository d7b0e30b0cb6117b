"""Not a speed benchmark: how much can adaptive allocation over surrogate clusters add to distinct extracted images?

Issue 18 step 3 proposed a bandit over clusters (reward: a new attacker-side candidate, clusters retired once their
image is out). This replays allocation policies on a pool of guided generations that already exists (one ``side
extract`` folder of a guided method, its targets recorded, and ``side evaluate``'s ``matches.parquet`` of it): a policy
picks a cluster, gets that cluster's next unused generation of the pool, and is scored afterwards by the distinct
training images its chosen generations copy (mid + high band, and high band). Policies:

- ``uniform``: a cluster drawn uniformly among those with generations left (the paper's draw; the same as a random
  subset of the pool);
- ``thompson``: Thompson sampling over clusters, Beta(1 + s, 1 + n - s) per cluster, in rounds of ``--round`` images;
  the reward is **blind**: after each round the chosen generations are ranked into near-duplicate groups
  (`diffusers_side.candidates.ranking.rank_candidates`, no training image read) and each group none of whose members
  was in a group before is credited to the clusters of its new members;
- ``retire``: uniform over the clusters that have not yet produced such a group (blind; retired once they have);
- ``oracle``: clusters drawn with probability proportional to the distinct mid + high training images per
  generation in their part of the pool. It **reads the training-set matches** and no attacker can run it: it is
  the ceiling of any fixed allocation over clusters, not a method.

The pool caps what each cluster can give (its generations), so budgets well below the pool size are the meaningful
ones. Each policy is replayed ``--replays`` times over random orders of the pool; mean and standard deviation.

Usage (a selection-seed pool; docs/attacker-study.md, "Allocation over clusters")::

    side extract --pipeline digits-rare --method side-exemplar --guidance-scale 10 --scheduler ddpm --seed 1 \\
        --num-images 4000 --exemplars RUN/inputs/labels --output pool
    side evaluate --generated pool --reference digits-rare --output pool-eval
    OMP_NUM_THREADS=1 python benchmarks/cluster_allocation.py --pool pool --matches pool-eval/matches.parquet \\
        --output results/cluster_allocation.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from diffusers_side.candidates.ranking import rank_candidates
from diffusers_side.storage.data import images_to_tensor, load_image_dataset
from diffusers_side.utils.atomic_io import write_json_atomic

POLICIES = ("uniform", "thompson", "retire", "oracle")
IN_BANDS = ("mid", "high")


class Pool:
    """A guided run's generations with their targets and (for scoring only) their best training match and band."""

    def __init__(self, folder: str, matches: str):
        generations = load_image_dataset(folder)
        self.rows = images_to_tensor(list(generations["image"])).flatten(1)
        self.targets = np.asarray(generations["target"])
        table = pq.read_table(matches).to_pydict()
        if table["row"] != list(range(len(self.rows))):
            raise ValueError(f"{matches} does not hold one row per generation of {folder}, in order.")
        self.best, self.band = np.asarray(table["best_match"]), np.asarray(table["band"])
        self.clusters = np.unique(self.targets)
        if self.clusters.min() < 0:
            raise ValueError(f"{folder} holds unguided generations (target -1); pass a guided run.")

    def distinct(self, chosen) -> tuple[int, int]:
        """Distinct training images copied in the mid + high bands, and in the high band (scoring only)."""
        chosen = np.asarray(chosen)
        best, band = self.best[chosen], self.band[chosen]
        return len(set(best[np.isin(band, IN_BANDS)])), len(set(best[band == "high"]))

    def oracle_weights(self) -> dict[int, float]:
        """Distinct mid + high training images per generation of each cluster (reads the training-set matches)."""
        weights = {}
        for c in self.clusters:
            own = self.targets == c
            weights[c] = len(set(self.best[own & np.isin(self.band, IN_BANDS)])) / own.sum() + 1e-9
        return weights

    def new_groups(self, chosen: list[int], grouped: set) -> list[set]:
        """Near-duplicate groups among the chosen generations (blind) that share no member with an earlier group."""
        ranked = rank_candidates(self.rows[chosen])
        groups = []
        for row, size, members in zip(ranked.row, ranked.group_size, ranked.members):
            group = {chosen[row], *(chosen[m] for m in members)}
            if size >= 2 and not group & grouped:
                groups.append(group)
        return groups


def pick(policy: str, live: list, rewards: dict, sent: dict, weights: dict, rng) -> int:
    """The next cluster of a policy among the clusters with generations left."""
    if policy == "thompson":
        return live[int(np.argmax([rng.beta(1 + rewards[c], 1 + sent[c] - rewards[c]) for c in live]))]
    if policy == "retire":
        fresh = [c for c in live if rewards[c] == 0] or live
        return fresh[rng.integers(len(fresh))]
    if policy == "oracle":
        p = np.array([weights[c] for c in live])
        return live[rng.choice(len(live), p=p / p.sum())]
    return live[rng.integers(len(live))]


def replay(pool: Pool, policy: str, budgets: list[int], round_size: int, seed: int) -> dict[int, tuple[int, int]]:
    """One replay of ``policy``: the distinct counts at each budget."""
    rng = np.random.default_rng(seed)
    queues = {c: list(rng.permutation(np.flatnonzero(pool.targets == c))) for c in pool.clusters}
    rewards, sent = dict.fromkeys(pool.clusters, 0.0), dict.fromkeys(pool.clusters, 0)
    weights = pool.oracle_weights() if policy == "oracle" else {}
    chosen, grouped, results = [], set(), {}
    while len(chosen) < max(budgets):
        this = []
        for _ in range(min(round_size, max(budgets) - len(chosen))):
            cluster = pick(policy, [c for c in pool.clusters if queues[c]], rewards, sent, weights, rng)
            this.append(queues[cluster].pop())
            sent[cluster] += 1
        chosen += this
        if policy in ("thompson", "retire"):
            new = set(this)
            for group in pool.new_groups(chosen, grouped):
                mine = [row for row in group if row in new]
                for row in mine:
                    rewards[pool.targets[row]] += 1.0 / len(mine)
                grouped |= group
        results.update({b: pool.distinct(chosen[:b]) for b in budgets if len(chosen) >= b and b not in results})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="a guided `side extract` folder")
    parser.add_argument("--matches", required=True, help="`side evaluate`'s matches.parquet of that folder")
    parser.add_argument("--budgets", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--round", type=int, default=100, help="images per round of the blind policies")
    parser.add_argument("--replays", type=int, default=6)
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--output", required=True, help="JSON of the results")
    args = parser.parse_args()
    pool = Pool(args.pool, args.matches)
    if max(args.budgets) > len(pool.rows):
        parser.error(f"--budgets {max(args.budgets)} exceeds the pool's {len(pool.rows)} generations.")
    pool_mid_high, pool_high = pool.distinct(range(len(pool.rows)))
    results = {"pool": args.pool, "pool_size": len(pool.rows), "clusters": len(pool.clusters),
               "pool_distinct_mid_high": pool_mid_high, "pool_distinct_high": pool_high, "replays": args.replays,
               "round": args.round, "policies": {}}
    for policy in args.policies:
        runs = [replay(pool, policy, sorted(args.budgets), args.round, seed) for seed in range(args.replays)]
        results["policies"][policy] = {}
        for budget in sorted(args.budgets):
            mid, high = np.array([r[budget][0] for r in runs]), np.array([r[budget][1] for r in runs])
            results["policies"][policy][str(budget)] = {
                "distinct_mid_high": [float(mid.mean()), float(mid.std())], "distinct_high": [float(high.mean()), float(high.std())]}
            print(f"{policy:9s} N {budget:6d}: distinct mid+high {mid.mean():6.1f} +- {mid.std():4.1f}, "
                  f"high {high.mean():5.1f} +- {high.std():4.1f}", flush=True)
    write_json_atomic(Path(args.output), results)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
