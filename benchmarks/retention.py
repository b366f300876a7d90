"""Retention benchmark: every strategy on both architectures across a grid of cluster changes,
zero-shot and after a fine-tune budget, next to retraining from scratch with the same budget.

    python -m benchmarks.retention --seeds 0 1 2 --out benchmarks/results/retention

Writes <out>.json (raw numbers, machine, seeds, git revision) and <out>.md (tables).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from benchmarks.common import machine_info, write_json
from metapolicy.adapt import AdaptationSettings, adapt
from metapolicy.cluster import make_cluster, resize_cluster
from metapolicy.evaluation import episode_returns, evaluation_seeds, reference, retention
from metapolicy.policy import make_policy
from metapolicy.ppo import PPOSettings, train
from metapolicy.strategies import STRATEGIES, choose_strategy, resize
from metapolicy.training import TrainingSettings, train_initial

DELTAS = (1, 2, 4, 8, 12, -1, -2, -4)


def new_cluster(base, delta: int, seed: int):
    """Growth draws fresh nodes; shrinkage removes nodes from the middle, by name."""
    return resize_cluster(base, delta, seed=seed + 101)


def run_one(arch: str, seed: int, args: argparse.Namespace) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    base = make_cluster(8, seed)
    settings = TrainingSettings(
        architecture=arch, hidden=args.hidden, steps=args.train_steps, seed=seed
    )
    trained = train_initial(base, settings)
    backup = trained.policy
    seeds = evaluation_seeds(args.episodes)
    ref_old = reference(base, None, seeds)
    backup_old = episode_returns(backup.agent(), base, None, seeds)
    rows = []
    for delta in args.deltas:
        nodes = new_cluster(base, delta, seed)
        ref_new = reference(nodes, None, seeds)
        auto = choose_strategy(backup.slot_names, [n.name for n in nodes])
        base_row = dict(arch=arch, seed=seed, delta=delta, base_score=trained.score, auto=auto)
        for strategy in STRATEGIES:
            zero = resize(backup, nodes, strategy)
            zero_returns = episode_returns(zero.agent(), nodes, None, seeds)
            kept0 = retention(zero_returns, ref_new, backup_old, ref_old)
            result = adapt(
                backup,
                nodes,
                AdaptationSettings(
                    strategy=strategy,
                    budget_steps=args.budget,
                    episodes=args.episodes,
                    min_retention=0.0,
                    seed=seed,
                ),
            )
            rows.append(
                base_row
                | dict(
                    strategy=strategy,
                    zero_shot_score=ref_new.score(zero_returns),
                    zero_shot_retention=kept0.value,
                    adapted_score=result.candidate_score,
                    adapted_retention=result.performance_retention,
                    adapted_interval=list(result.retention_interval),
                    backup_masked_score=result.backup_masked_score,
                    seconds=result.adaptation_time,
                    timings=result.timings,
                )
            )
        scratch = make_policy(arch, nodes, args.hidden, seed + 1000)
        untrained = episode_returns(scratch.agent(), nodes, None, seeds)
        start = time.perf_counter()
        train(scratch, nodes, None, PPOSettings(steps=args.budget, seed=seed))
        scratch_returns = episode_returns(scratch.agent(), nodes, None, seeds)
        rows.append(
            base_row
            | dict(
                strategy="scratch",
                zero_shot_score=ref_new.score(untrained),  # untrained = the myopic rule
                adapted_score=ref_new.score(scratch_returns),
                adapted_retention=retention(scratch_returns, ref_new, backup_old, ref_old).value,
                seconds=time.perf_counter() - start,
            )
        )
        print(f"{arch} seed={seed} delta={delta:+d} done", flush=True)
    return rows


def summarise(rows: list[dict]) -> str:
    lines = []
    for arch in sorted({r["arch"] for r in rows}):
        lines += [
            f"\n### {arch}: retention zero-shot -> after fine-tune (mean ± sd over seeds)\n",
            "| Δ | " + " | ".join([*STRATEGIES, "auto", "scratch"]) + " |",
            "|---" * (len(STRATEGIES) + 3) + "|",
        ]
        for delta in sorted({r["delta"] for r in rows}, key=lambda d: (d < 0, abs(d))):
            cells = []
            picked = [r for r in rows if r["arch"] == arch and r["delta"] == delta]
            for strategy in [*STRATEGIES, "auto", "scratch"]:
                if strategy == "auto":
                    sel = [r for r in picked if r["strategy"] == r["auto"]]
                else:
                    sel = [r for r in picked if r["strategy"] == strategy]
                after = np.array([r["adapted_retention"] for r in sel])
                if strategy == "scratch":
                    cells.append(f"{after.mean():.3f} ± {after.std():.3f}")
                    continue
                zero = np.array([r["zero_shot_retention"] for r in sel])
                cells.append(f"{zero.mean():.2f} -> {after.mean():.3f} ± {after.std():.3f}")
            lines.append(f"| {delta:+d} | " + " | ".join(cells) + " |")
        secs = [r["seconds"] for r in rows if r["arch"] == arch and r["strategy"] != "scratch"]
        lines.append(
            f"\nadaptation wall time: median {np.median(secs):.1f}s, max {np.max(secs):.1f}s"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", nargs="+", default=["node-set", "slot-mlp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--deltas", nargs="+", type=int, default=list(DELTAS))
    parser.add_argument("--train-steps", type=int, default=300_000)
    parser.add_argument("--budget", type=int, default=50_000)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/retention")
    args = parser.parse_args()
    jobs = [(arch, seed) for arch in args.archs for seed in args.seeds]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        parts = list(pool.map(run_one, *zip(*jobs, strict=True), [args] * len(jobs)))
    rows = [row for part in parts for row in part]
    table = summarise(rows)
    write_json(
        f"{args.out}.json",
        {
            "args": vars(args),
            "machine": machine_info(),
            "seconds": time.perf_counter() - start,
            "rows": rows,
        },
    )
    with open(f"{args.out}.md", "w") as f:
        f.write(f"# Retention (base 8 nodes, hidden {args.hidden}, budget {args.budget} steps)\n")
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
