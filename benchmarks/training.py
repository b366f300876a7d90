"""Initial training: normalised score S against the heuristics, and wall time, per architecture
and seed, with the untrained policy (whose argmax is the myopic rule) as the ablation.

    python -m benchmarks.training --seeds 0 1 2 --out benchmarks/results/training
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from benchmarks.common import machine_info, write_json
from metapolicy.cluster import make_cluster
from metapolicy.evaluation import episode_returns, evaluation_seeds, reference
from metapolicy.policy import make_policy
from metapolicy.training import TrainingSettings, train_initial


def run_one(arch: str, seed: int, steps: int, hidden: int, episodes: int) -> dict:
    import torch

    torch.set_num_threads(1)
    nodes = make_cluster(8, seed)
    seeds = evaluation_seeds(episodes)
    ref = reference(nodes, None, seeds)
    untrained = make_policy(arch, nodes, hidden, seed)
    start = time.perf_counter()
    result = train_initial(
        nodes,
        TrainingSettings(
            architecture=arch, hidden=hidden, steps=steps, seed=seed, episodes=episodes
        ),
    )
    return {
        "arch": arch,
        "seed": seed,
        "steps": result.steps,
        "seconds": time.perf_counter() - start,
        "score": result.score,
        "untrained_score": ref.score(episode_returns(untrained.agent(), nodes, None, seeds)),
        "best_heuristic": ref.best,
        "heuristic_returns": {k: float(v.mean()) for k, v in ref.heuristics.items()},
        "random_return": float(ref.random.mean()),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| architecture | S trained (mean ± sd) | per seed | untrained S | train time (s) |",
        "|---|---|---|---|---|",
    ]
    for arch in sorted({r["arch"] for r in rows}):
        sel = [r for r in rows if r["arch"] == arch]
        s = np.array([r["score"] for r in sel])
        u = np.array([r["untrained_score"] for r in sel])
        t = np.array([r["seconds"] for r in sel])
        per_seed = ", ".join(f"{x:.3f}" for x in s)
        lines.append(
            f"| {arch} | {s.mean():.3f} ± {s.std():.3f} | {per_seed} | {u.mean():.3f} | "
            f"{t.mean():.0f} (max {t.max():.0f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", nargs="+", default=["node-set", "slot-mlp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/training")
    args = parser.parse_args()
    jobs = [(a, s) for a in args.archs for s in args.seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [
            pool.submit(run_one, a, s, args.steps, args.hidden, args.episodes) for a, s in jobs
        ]
        rows = [f.result() for f in futures]
    write_json(f"{args.out}.json", {"args": vars(args), "machine": machine_info(), "rows": rows})
    text = table(rows)
    with open(f"{args.out}.md", "w") as f:
        f.write(
            f"# Initial training at 8 nodes, hidden {args.hidden}, {args.steps} steps\n\n{text}\n"
        )
    print(text)


if __name__ == "__main__":
    main()
