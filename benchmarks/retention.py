"""Retention benchmark: initial training, then every strategy on both architectures across a
grid of cluster changes, zero-shot and after the default fine-tune budget, next to retraining
from scratch on the new cluster; with learning curves, so "how many environment steps until
95% of the pre-resize S" can be compared for adapted and scratch.

    python -m benchmarks.retention            # every strategy and change, scratch to 100k steps
    python -m benchmarks.retention --quick    # the auto strategy on 3 of the 8 changes

Writes <out>.json (raw numbers, curves, machine, seeds, git revision), <out>.md (tables) and
<out>-retention.png, <out>-curves.png.

Every S and retention figure is measured on 64 validation episodes, not the operator's default
16: on 16 episodes one S has a standard error of about 0.02-0.03, as large as the margins the
targets ask about (the same three policies scored 1.085/1.062/1.050 on the first 16 validation
seeds and 1.092/1.058/1.057 on 64). Curves are scored on the selection episodes the trainer
already plays to keep its best weights (16, disjoint from the validation ones), so they cost
nothing extra and every point is the best-so-far policy, the one that would serve.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from benchmarks.common import machine_info, write_json
from metapolicy.adapt import AdaptationSettings, adapt
from metapolicy.cluster import make_cluster, resize_cluster
from metapolicy.evaluation import Reference, episode_returns, evaluation_seeds, reference
from metapolicy.evaluation import retention as measure_retention
from metapolicy.policy import make_policy
from metapolicy.selection import selection_seeds
from metapolicy.strategies import STRATEGIES, choose_strategy, resize
from metapolicy.training import TrainingSettings, train_initial

DELTAS = (1, 2, 4, 8, 12, -1, -2, -4)
QUICK_DELTAS = (1, 8, -2)  # one node joins, a big scale-up, two middle slots leave
EPISODES = 64  # validation episodes behind every S and retention figure
SELECT_EPISODES = 16  # the trainers' default selection episodes, which the curves reuse
TARGET = 0.95  # of the pre-resize S


def score_curve(curve: list[tuple[int, float, float]], ref: Reference) -> dict:
    """(steps, seconds, mean return) points -> best-so-far S: the weights that would serve."""
    scores = np.maximum.accumulate([ref.score(np.array([r])) for _, _, r in curve])
    return {
        "steps": [steps for steps, _, _ in curve],
        "seconds": [seconds for _, seconds, _ in curve],
        "score": scores.tolist(),
    }


def first_reaching(curve: dict, target: float) -> tuple[int, float] | tuple[None, None]:
    """(steps, seconds) of the first point at or above `target`."""
    for steps, seconds, score in zip(curve["steps"], curve["seconds"], curve["score"], strict=True):
        if score >= target:
            return steps, seconds
    return None, None


def at_steps(curve: dict, steps: int) -> float:
    return max(s for n, s in zip(curve["steps"], curve["score"], strict=True) if n <= steps)


def train_base(arch: str, seed: int, args: argparse.Namespace):
    base = make_cluster(8, seed)
    untrained = make_policy(arch, base, args.hidden, seed)
    start = time.perf_counter()
    trained = train_initial(
        base,
        TrainingSettings(
            architecture=arch,
            hidden=args.hidden,
            steps=args.train_steps,
            seed=seed,
            episodes=EPISODES,
        ),
    )
    seeds = evaluation_seeds(EPISODES)
    ref = reference(base, None, seeds)
    row = {
        "arch": arch,
        "seed": seed,
        "steps": trained.steps,
        "seconds": time.perf_counter() - start,
        "score": trained.score,
        "untrained_score": ref.score(episode_returns(untrained.agent(), base, None, seeds)),
        "best_heuristic": ref.best,
        "curve": score_curve(
            trained.curve, reference(base, None, selection_seeds(SELECT_EPISODES))
        ),
    }
    return base, trained, ref, row


def train_scratch(arch: str, nodes, seed: int, steps: int, args: argparse.Namespace, **extra):
    """A fresh policy for the new cluster, as initial training would make it."""
    settings = TrainingSettings(
        architecture=arch, hidden=args.hidden, steps=steps, seed=seed + 1000, **extra
    )
    return train_initial(nodes, settings)


def run_one(arch: str, seed: int, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    base, trained, ref_old, training_row = train_base(arch, seed, args)
    backup = trained.policy
    target = TARGET * trained.score
    seeds = evaluation_seeds(EPISODES)
    backup_old = episode_returns(backup.agent(), base, None, seeds)
    rows, curves = [], []
    for delta in args.deltas:
        nodes = resize_cluster(base, delta, seed=seed + 101)  # shrinking removes middle nodes
        ref_new = reference(nodes, None, seeds)
        ref_select = reference(nodes, None, selection_seeds(SELECT_EPISODES))
        auto = choose_strategy(backup.slot_names, [n.name for n in nodes])
        common = dict(arch=arch, seed=seed, delta=delta, base_score=trained.score, auto=auto)
        for strategy in STRATEGIES if args.every_strategy else [auto]:
            zero = resize(backup, nodes, strategy)
            zero_returns = episode_returns(zero.agent(), nodes, None, seeds)
            result = adapt(
                backup,
                nodes,
                AdaptationSettings(
                    strategy=strategy, episodes=EPISODES, min_retention=0.0, seed=seed
                ),
            )
            curve = score_curve(result.curve, ref_select)
            rows.append(
                common
                | dict(
                    strategy=strategy,
                    zero_shot_score=ref_new.score(zero_returns),
                    zero_shot_retention=measure_retention(
                        zero_returns, ref_new, backup_old, ref_old
                    ).value,
                    adapted_score=result.candidate_score,
                    adapted_retention=result.performance_retention,
                    adapted_interval=list(result.retention_interval),
                    backup_masked_score=result.backup_masked_score,
                    steps_to_target=first_reaching(curve, target)[0],
                    curve_score_at_budget=curve["score"][-1],
                    seconds=result.adaptation_time,
                    timings=result.timings,
                )
            )
            if strategy == auto:
                curves.append(common | dict(kind="adapted", target=target) | curve)
        scratch = train_scratch(arch, nodes, seed, args.scratch_steps, args, select_every=2)
        curve = score_curve(scratch.curve, ref_select)
        steps_to_target, seconds_to_target = first_reaching(curve, target)
        at_budget = at_steps(curve, args.budget)
        # Equal budget, judged like the adapted policy: its own run, validation episodes.
        equal = train_scratch(arch, nodes, seed, args.budget, args)
        equal_returns = episode_returns(equal.policy.agent(), nodes, None, seeds)
        rows.append(
            common
            | dict(
                strategy="scratch",
                zero_shot_score=curve["score"][0],  # untrained: the myopic rule
                adapted_score=ref_new.score(equal_returns),
                adapted_retention=measure_retention(
                    equal_returns, ref_new, backup_old, ref_old
                ).value,
                steps_to_target=steps_to_target,
                seconds_to_target=seconds_to_target,
                curve_score_at_budget=at_budget,
                curve_score_at_end=curve["score"][-1],
                seconds=scratch.seconds,
            )
        )
        curves.append(common | dict(kind="scratch", target=target) | curve)
        print(f"{arch} seed={seed} delta={delta:+d} done", flush=True)
    return {"training": training_row, "rows": rows, "curves": curves}


def mean_sd(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f} ± {values.std():.3f}"


def training_budgets(args: argparse.Namespace) -> str:
    steps = {
        arch: TrainingSettings(architecture=arch, steps=args.train_steps).steps
        for arch in args.archs
    }
    return ", ".join(f"{arch} {n // 1000}k steps" for arch, n in steps.items())


def training_table(rows: list[dict]) -> str:
    lines = [
        "| architecture | S trained (mean ± sd) | per seed | untrained S | train time (s) |",
        "|---|---|---|---|---|",
    ]
    for arch in sorted({r["arch"] for r in rows}):
        sel = [r for r in rows if r["arch"] == arch]
        seconds = np.array([r["seconds"] for r in sel])
        lines.append(
            f"| {arch} | {mean_sd([r['score'] for r in sel])} | "
            + ", ".join(f"{r['score']:.3f}" for r in sel)
            + f" | {np.mean([r['untrained_score'] for r in sel]):.3f} | "
            f"{seconds.mean():.0f} (max {seconds.max():.0f}) |"
        )
    return "\n".join(lines)


def by_delta(rows: list[dict]) -> list[int]:
    return sorted({r["delta"] for r in rows}, key=lambda d: (d < 0, abs(d)))


def pick(rows: list[dict], arch: str, delta: int, strategy: str) -> list[dict]:
    sel = [r for r in rows if r["arch"] == arch and r["delta"] == delta]
    if strategy == "auto":
        return [r for r in sel if r["strategy"] == r["auto"]]
    return [r for r in sel if r["strategy"] == strategy]


def steps_cell(sel: list[dict]) -> str:
    """Median steps to 95% of the pre-resize S; '>' when a seed never got there."""
    steps = [r["steps_to_target"] for r in sel]
    missing = sum(s is None for s in steps)
    reached = [s for s in steps if s is not None]
    text = f"{np.median(reached) / 1000:.0f}k" if reached else "-"
    return text + (f" ({missing}/{len(steps)} never)" if missing else "")


def retention_tables(rows: list[dict], budget: int, strategies: list[str]) -> str:
    """Retention per strategy and Δ; then steps to 95% of the pre-resize S, adapted vs scratch.
    Scratch's S at the end of its longer run is the best a policy is known to reach on the new
    cluster: retention below 1 can be the new cluster leaving less to learn, not forgetting."""
    lines = []
    for arch in sorted({r["arch"] for r in rows}):
        lines += [
            f"\n### {arch}: retention zero-shot -> after {budget // 1000}k steps "
            "(mean ± sd over seeds)\n",
            "| Δ | " + " | ".join([*strategies, "scratch"]) + " |",
            "|---" * (len(strategies) + 2) + "|",
        ]
        for delta in by_delta(rows):
            cells = []
            for strategy in strategies:
                sel = pick(rows, arch, delta, strategy)
                zero = np.mean([r["zero_shot_retention"] for r in sel])
                cells.append(f"{zero:.2f} -> {mean_sd([r['adapted_retention'] for r in sel])}")
            cells.append(
                mean_sd([r["adapted_retention"] for r in pick(rows, arch, delta, "scratch")])
            )
            lines.append(f"| {delta:+d} | " + " | ".join(cells) + " |")
        lines += [
            f"\n### {arch}: environment steps to 95% of the pre-resize S (median over seeds; "
            "S here is the best-so-far policy on the selection episodes)\n",
            "| Δ | adapted (auto) | scratch | scratch seconds | S at budget: adapted / scratch "
            "| scratch S at the end |",
            "|---|---|---|---|---|---|",
        ]
        for delta in by_delta(rows):
            adapted, scratch = pick(rows, arch, delta, "auto"), pick(rows, arch, delta, "scratch")
            secs = [r["seconds_to_target"] for r in scratch if r["seconds_to_target"] is not None]
            cells = [
                steps_cell(adapted),
                steps_cell(scratch),
                f"{np.median(secs):.0f}" if secs else "-",
                f"{np.mean([r['curve_score_at_budget'] for r in adapted]):.3f} / "
                f"{np.mean([r['curve_score_at_budget'] for r in scratch]):.3f}",
                f"{np.mean([r['curve_score_at_end'] for r in scratch]):.3f}",
            ]
            lines.append(f"| {delta:+d} | " + " | ".join(cells) + " |")
        secs = [r["seconds"] for r in rows if r["arch"] == arch and r["strategy"] != "scratch"]
        lines.append(
            f"\nadaptation wall time: median {np.median(secs):.1f}s, max {np.max(secs):.1f}s"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="auto strategy, shorter scratch")
    parser.add_argument("--archs", nargs="+", default=["node-set", "slot-mlp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--deltas", nargs="+", type=int)
    parser.add_argument("--train-steps", type=int, help="default: the architecture's default")
    parser.add_argument("--scratch-steps", type=int)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/retention")
    args = parser.parse_args()
    args.every_strategy = not args.quick
    args.deltas = args.deltas or list(QUICK_DELTAS if args.quick else DELTAS)
    args.scratch_steps = args.scratch_steps or 100_000
    args.budget = AdaptationSettings().budget_steps
    jobs = [(arch, seed) for arch in args.archs for seed in args.seeds]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        parts = list(pool.map(run_one, *zip(*jobs, strict=True), [args] * len(jobs)))
    data = {
        "args": vars(args),
        "machine": machine_info(),
        "seconds": time.perf_counter() - start,
        "training": [p["training"] for p in parts],
        "rows": [row for p in parts for row in p["rows"]],
        "curves": [curve for p in parts for curve in p["curves"]],
    }
    write_json(f"{args.out}.json", data)
    text = (
        f"# Training and retention (base 8 nodes, hidden {args.hidden}, "
        f"{len(args.seeds)} seeds, {data['seconds'] / 60:.0f} min)\n\n"
        f"S and retention on {EPISODES} validation episodes; scratch is a fresh policy trained "
        f"with the adaptation budget ({args.budget // 1000}k steps) on the new cluster, "
        "scored the same way.\n\n"
        f"## Initial training ({training_budgets(args)})\n\n"
        + training_table(data["training"])
        + "\n\n## Retention\n"
        + retention_tables(
            data["rows"], args.budget, [*STRATEGIES, "auto"] if args.every_strategy else ["auto"]
        )
    )
    with open(f"{args.out}.md", "w") as f:
        f.write(text + "\n")
    print(text)
    from benchmarks import plots

    plots.retention_vs_delta(data["rows"], f"{args.out}-retention.png")
    plots.learning_curves(data["curves"], f"{args.out}-curves.png")


if __name__ == "__main__":
    main()
