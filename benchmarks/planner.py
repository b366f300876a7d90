"""A model-predictive planner: the reference ceiling a learned policy is compared with.

Not served and not a target: for each candidate node it simulates the next `horizon` tasks
under a rollout rule (the myopic rule unless told) and picks the node with the cheapest
simulated future. What it does not know it draws from the workload: the next tasks as a
contiguous run of tasks from training episodes (so bursts stay bursts), the remaining run times
of the running pods and the run time of the pod being placed from run times of the same QoS
class and size longer than what the pod has already run. `knows` hands it the truth instead:
`arrivals` (the real next tasks: sizes, classes, arrival times), `durations` (every real end
time and run time), or both, which is the true future. Comparing the four says what each part
of the future is worth on a workload, and whether a planner that knows only what a scheduler
knows gains anything over its own rollout rule.

    .venv/bin/python -m benchmarks.planner --workload synthetic --episodes 16
    .venv/bin/python -m benchmarks.planner --workload trace:PATH --rollout best_fit \\
        --samples 32 --margin 1 --decompose --out benchmarks/results/planner-alibaba
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metapolicy.baselines import HEURISTICS
from metapolicy.cluster import NodeProfile, make_cluster
from metapolicy.evaluation import episode_stats, evaluation_seeds, reference_stats
from metapolicy.features import Observation
from metapolicy.sim import PlacementSim
from metapolicy.traces import TaskBatch, Workload, task_source

POOL_EPISODES = 64
NEVER = 1e15  # arrival time of tasks past the episode's end: they never count
KNOWABLE = ("arrivals", "durations")
TASK_FIELDS = ("cpu", "memory", "duration", "arrival", "qos", "attributes")


@dataclass(frozen=True)
class FixedTasks:
    """A task source that hands out one prepared batch (the planner's imagined futures)."""

    batch: TaskBatch

    @property
    def episode_tasks(self) -> int:
        return self.batch.episode_tasks

    def draw(self, seeds, capacity_cpu, largest=None) -> TaskBatch:
        return self.batch


def _keys(qos: np.ndarray, cpu: np.ndarray) -> np.ndarray:
    """QoS class and size (cpu in half-octaves) as one integer: 1000 * qos + bin."""
    size = np.clip(np.floor(2 * np.log2(np.maximum(cpu, 1e-3))) + 100, 0, 999)
    return 1000 * np.asarray(qos, np.int64) + size.astype(np.int64)


class Planner:
    """An `Agent` (sim, obs) -> actions that plans by simulation.

    With `samples` > 1 every candidate is simulated against the same `samples` imagined
    futures; `margin` > 0 makes it conservative: it leaves the rollout rule's own choice only
    for a node whose simulated saving exceeds `margin` standard errors of the paired
    difference (policy improvement that does not chase the futures' noise)."""

    def __init__(
        self,
        nodes: Sequence[NodeProfile],
        workload: Workload | None,
        horizon: int = 48,
        samples: int = 1,
        knows: Collection[str] = (),
        rollout: str = "myopic",
        margin: float = 0.0,
        seed: int = 0,
    ) -> None:
        unknown = set(knows) - set(KNOWABLE)
        if unknown:
            raise ValueError(f"a planner can know {', '.join(KNOWABLE)}, not {sorted(unknown)}")
        if rollout not in HEURISTICS:
            raise ValueError(
                f"unknown rollout rule {rollout!r}; choose from {', '.join(HEURISTICS)}"
            )
        self.knows, self.rollout, self.margin = frozenset(knows), HEURISTICS[rollout], margin
        self.nodes, self.horizon = list(nodes), horizon
        self.samples = 1 if self.true_future else samples  # nothing left to draw
        self.rng = np.random.default_rng(seed)
        capacity = sum(n.cpu for n in nodes)
        largest = (max(n.cpu for n in nodes), max(n.memory_mib for n in nodes))
        # training-window episodes: what the planner knows of the workload
        self.pool = task_source(workload).draw(list(range(POOL_EPISODES)), capacity, largest)
        qos, duration = self.pool.qos.ravel(), self.pool.duration.ravel()
        finite = np.isfinite(duration)
        keys = _keys(qos, self.pool.cpu.ravel())
        self.durations = {int(k): np.sort(duration[(keys == k) & finite]) for k in np.unique(keys)}
        self.by_qos = {int(k): np.sort(duration[(qos == k) & finite]) for k in np.unique(qos)}
        self.all_durations = np.sort(duration[finite])

    @property
    def true_future(self) -> bool:
        return self.knows == frozenset(KNOWABLE)

    # ----- sampling what the planner does not know ------------------------------------------------
    def _duration_given_age(self, qos: np.ndarray, cpu: np.ndarray, age: np.ndarray) -> np.ndarray:
        """Run times of pool tasks of the same QoS class and about the same size (what a
        scheduler knows of a pod) longer than `age`, uniform among them."""
        out = np.full(age.shape, np.inf)
        keys = _keys(qos, cpu)
        for key in np.unique(keys):
            pool = self.durations.get(int(key))
            if pool is None:
                pool = self.by_qos.get(int(key) // 1000, self.all_durations)
            if not len(pool):
                continue
            rows = keys == key
            first = np.searchsorted(pool, age[rows], side="right")
            left = len(pool) - first
            pick = first + np.floor(self.rng.random(rows.sum()) * np.maximum(left, 1)).astype(int)
            out[rows] = np.where(left > 0, pool[np.minimum(pick, len(pool) - 1)], np.inf)
        return out

    def _futures(self, sim: PlacementSim) -> TaskBatch:
        """(B * samples) task batches of 1 + horizon tasks starting with the current one."""
        b, i = sim.batch, sim.step_index
        h = min(self.horizon, self.pool.episode_tasks - 1)
        rows = np.repeat(np.arange(b), self.samples)
        n = len(rows)
        if "arrivals" in self.knows:
            t = sim.tasks
            cols = np.minimum(i + np.arange(h + 1), t.episode_tasks - 1)
            out = {name: getattr(t, name)[rows][:, cols] for name in TASK_FIELDS}
            late = i + np.arange(h + 1) >= t.episode_tasks  # past the episode: never arrive
            out["arrival"] = np.where(late[None, :], NEVER, out["arrival"])
        else:
            pool, now = self.pool, sim.now[rows]
            episode = self.rng.integers(0, pool.cpu.shape[0], n)
            start = self.rng.integers(0, pool.episode_tasks - h, n)
            cols = start[:, None] + np.arange(1, h + 1)[None, :]
            gaps = np.diff(pool.arrival[episode[:, None], np.c_[start, cols]], axis=1)
            out = {"arrival": np.c_[now, now[:, None] + np.cumsum(gaps, axis=1)]}
            for name in ("cpu", "memory", "duration", "qos", "attributes"):
                current = getattr(sim.tasks, name)[rows, i][:, None]
                out[name] = np.concatenate(
                    [current, getattr(pool, name)[episode[:, None], cols]], 1
                )
        if "durations" not in self.knows:
            # the real next tasks, or drawn ones: either way no run time it could not know
            drawn = self._duration_given_age(
                out["qos"].ravel(), out["cpu"].ravel(), np.zeros(out["qos"].size)
            ).reshape(out["qos"].shape)
            first = slice(None) if "arrivals" in self.knows else slice(0, 1)
            out["duration"][:, first] = drawn[:, first]
        return TaskBatch(**out)

    def _ends(self, sim: PlacementSim) -> np.ndarray:
        """End times of the running pods, drawn given their ages: (B * samples, N, S)."""
        rows = np.repeat(np.arange(sim.batch), self.samples)
        if "durations" in self.knows:
            return sim.end[rows].copy()
        start, held = sim.start[rows], sim.held_cpu[rows]
        running = held > 0
        age = (sim.now[rows][:, None, None] - start)[running]
        end = np.zeros(held.shape)
        end[running] = start[running] + self._duration_given_age(
            sim.held_qos[rows][running], held[running], age
        )
        return end

    def _simulated_costs(self, sim: PlacementSim) -> np.ndarray:
        """(B, N, samples): the cost of the next tasks after placing the current one on each
        node, every candidate against the same imagined futures (common random numbers)."""
        b, size, k = sim.batch, sim.size, self.samples
        futures, ends = self._futures(sim), self._ends(sim)  # (b * k) rows
        # layout: episode, candidate, sample
        pick = (np.arange(b)[:, None, None] * k + np.arange(k)[None, None, :]).repeat(size, 1)
        pick = pick.reshape(-1)
        batch = TaskBatch(**{f: getattr(futures, f)[pick] for f in TASK_FIELDS})
        # The rollout rule is a heuristic, which reads the simulator: no observations to build.
        look = PlacementSim(
            self.nodes, FixedTasks(batch), len(pick), slots_per_node=sim.slots, observation_rows=1
        )
        look.available = sim.available
        look.reset(list(range(len(pick))))
        rows = pick // k
        for name in ("start", "held_cpu", "held_memory", "held_qos", "used_cpu", "used_memory"):
            setattr(look, name, getattr(sim, name)[rows].copy())
        look.end = ends[pick]
        look._placement = None
        actions = np.tile(np.repeat(np.arange(size), k), b)
        total, done = np.zeros(len(pick)), False
        while not done:
            counts = look.tasks.arrival[:, look.step_index] < NEVER
            look_obs, _, done, cost = look.step(actions)
            total += np.where(counts, cost, 0.0)
            if not done:
                actions = self.rollout(look, look_obs)
        return total.reshape(b, size, k)

    def __call__(self, sim: PlacementSim, obs: Observation) -> np.ndarray:
        costs = self._simulated_costs(sim)
        if self.margin <= 0:
            score = costs.mean(-1)
        else:
            own = np.asarray(self.rollout(sim, obs))
            rows = np.arange(sim.batch)
            saving = costs - costs[rows, own][:, None, :]  # paired with the rule's own choice
            spread = saving.std(-1, ddof=1) if self.samples > 1 else np.zeros(saving.shape[:2])
            score = saving.mean(-1) + self.margin * spread / np.sqrt(self.samples)
            score[rows, own] = 0.0
        return np.argmin(np.where(obs.choices, score, np.inf), axis=-1)


# ----- the benchmark ------------------------------------------------------------------------------
def plan_job(spec: str, nodes: int, episodes: int, knows: tuple[str, ...], options: dict) -> dict:
    """One planner over the validation episodes, scored against every heuristic on them."""
    import torch

    from benchmarks.common import bootstrap
    from metapolicy.sources import load_workload

    torch.set_num_threads(1)
    workload, cluster = load_workload(spec), make_cluster(nodes)
    seeds = evaluation_seeds(episodes)
    ref, heuristics = reference_stats(cluster, workload, seeds)
    planner = Planner(cluster, workload, knows=knows, **options)
    start = time.perf_counter()
    stats = episode_stats(planner, cluster, workload, seeds)
    seconds = time.perf_counter() - start
    return {
        "knows": list(knows),
        "true_future": planner.true_future,
        "episodes": episodes,
        "score": ref.score(stats.returns),
        "interval": list(bootstrap(ref, stats.returns)),
        "seconds": seconds,
        "best_heuristic": {"name": ref.best, **heuristics[ref.best].summary()},
        **stats.summary(),
    }


def knowledge_sets(decompose: bool) -> list[tuple[str, ...]]:
    """Drawn and true future; with `decompose` also each part of the future alone."""
    if decompose:
        return [(), ("durations",), ("arrivals",), KNOWABLE]
    return [(), KNOWABLE]


def workload_name(spec: str) -> str:
    """A trace by its file name, not its whole path."""
    return Path(spec.rsplit(":", 1)[-1]).name if ":" in spec else spec


def table(results: list[dict], args: argparse.Namespace) -> str:
    best = results[0]["best_heuristic"]
    lines = [
        f"# What the future is worth to a planner ({workload_name(args.workload)}, "
        f"make_cluster({args.nodes}))",
        "",
        f"Rollout rule {args.rollout}, {args.horizon} tasks ahead, {args.samples} imagined "
        f"futures per decision, margin {args.margin} standard errors, {args.episodes} validation "
        f"episodes. S = 1 is the best heuristic there, {best['name']}: "
        f"{best['cost_ms']:.1f} ms per task, {100 * best['reject_rate']:.2f}% rejected.",
        "",
        "| the planner knows | S [90% interval] | cost ms/task | rejected | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        knows = " and ".join(r["knows"]) or "only what a scheduler knows (all drawn)"
        low, high = r["interval"]
        lines.append(
            f"| {knows} | {r['score']:.3f} [{low:.3f}, {high:.3f}] | {r['cost_ms']:.1f} | "
            f"{100 * r['reject_rate']:.2f}% | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    from concurrent.futures import ProcessPoolExecutor

    from benchmarks.common import machine_info, write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="synthetic")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=48)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--rollout", default="myopic", choices=list(HEURISTICS))
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument(
        "--decompose", action="store_true", help="also knowing only arrivals, only durations"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)
    options = dict(
        horizon=args.horizon, samples=args.samples, rollout=args.rollout, margin=args.margin
    )
    sets = knowledge_sets(args.decompose)
    with ProcessPoolExecutor(args.workers) as pool:
        jobs = [
            pool.submit(plan_job, args.workload, args.nodes, args.episodes, knows, options)
            for knows in sets
        ]
        results = [job.result() for job in jobs]
    text = table(results, args)
    print(text)
    if args.out:
        write_json(
            f"{args.out}.json",
            {"args": vars(args), "machine": machine_info(), "results": results},
        )
        with open(f"{args.out}.md", "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
