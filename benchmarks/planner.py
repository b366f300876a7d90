"""A model-predictive planner: the reference ceiling a learned policy is compared with.

Not served and not a target: for each candidate node it simulates the next `horizon` tasks
under the myopic rule and picks the node with the cheapest simulated future. The future is
drawn from the workload (a contiguous run of tasks from training episodes, so bursts stay
bursts), and so are the remaining run times of the running pods and the run time of the pod
being placed (from run times of the same QoS class longer than what the pod has already run):
it knows the workload's statistics, not what will happen. With `true_future=True` it is handed
the real next tasks and every real end time instead: how much knowing the future is worth.

    .venv/bin/python -m benchmarks.planner --workload synthetic --episodes 16
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metapolicy.baselines import myopic
from metapolicy.cluster import NodeProfile, make_cluster
from metapolicy.evaluation import episode_stats, evaluation_seeds, reference_stats
from metapolicy.features import Observation
from metapolicy.sim import PlacementSim
from metapolicy.traces import TaskBatch, Workload, task_source

POOL_EPISODES = 64
NEVER = 1e15  # arrival time of tasks past the episode's end: they never count


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
    """An `Agent` (sim, obs) -> actions that plans by simulation."""

    def __init__(
        self,
        nodes: Sequence[NodeProfile],
        workload: Workload | None,
        horizon: int = 48,
        samples: int = 1,
        true_future: bool = False,
        seed: int = 0,
    ) -> None:
        self.nodes, self.horizon, self.samples = list(nodes), horizon, samples
        self.true_future = true_future
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
        now = sim.now[rows]
        out = {}
        if self.true_future:
            t = sim.tasks
            cols = np.minimum(i + np.arange(h + 1), t.episode_tasks - 1)
            for name in ("cpu", "memory", "duration", "qos", "arrival", "attributes"):
                out[name] = getattr(t, name)[rows][:, cols]
            late = i + np.arange(h + 1) >= t.episode_tasks  # past the episode: never arrive
            out["arrival"] = np.where(late[None, :], NEVER, out["arrival"])
            return TaskBatch(**out)
        pool = self.pool
        episode = self.rng.integers(0, pool.cpu.shape[0], n)
        start = self.rng.integers(0, pool.episode_tasks - h, n)
        cols = start[:, None] + np.arange(1, h + 1)[None, :]
        gaps = np.diff(pool.arrival[episode[:, None], np.c_[start, cols]], axis=1)
        out["arrival"] = np.c_[now, now[:, None] + np.cumsum(gaps, axis=1)]
        for name in ("cpu", "memory", "duration", "qos", "attributes"):
            current = getattr(sim.tasks, name)[rows, i][:, None]
            out[name] = np.concatenate([current, getattr(pool, name)[episode[:, None], cols]], 1)
        out["duration"][:, 0] = self._duration_given_age(
            out["qos"][:, 0], out["cpu"][:, 0], np.zeros(n)
        )
        return TaskBatch(**out)

    def __call__(self, sim: PlacementSim, obs: Observation) -> np.ndarray:
        """Every candidate node of an episode is tried against the same imagined futures
        (common random numbers), so their comparison is not drowned in the futures' noise."""
        b, size, k = sim.batch, sim.size, self.samples
        futures = self._futures(sim)  # (b * k) rows
        ends = None if self.true_future else self._ends(sim)  # (b * k, N, S)
        # layout: episode, candidate, sample
        pick = (np.arange(b)[:, None, None] * k + np.arange(k)[None, None, :]).repeat(size, 1)
        pick = pick.reshape(-1)
        batch = TaskBatch(**{f: getattr(futures, f)[pick] for f in TASK_FIELDS})
        look = PlacementSim(
            self.nodes, FixedTasks(batch), batch=len(pick), slots_per_node=sim.slots
        )
        look.available = sim.available
        look.reset(list(range(len(pick))))
        rows = pick // k
        for name in ("start", "held_cpu", "held_memory", "held_qos", "used_cpu", "used_memory"):
            setattr(look, name, getattr(sim, name)[rows].copy())
        look.end = sim.end[rows].copy() if ends is None else ends[pick]
        look._placement = None
        first = np.tile(np.repeat(np.arange(size), k), b)
        total = np.zeros(len(pick))
        look_obs, done = None, False
        actions = first
        while not done:
            counts = look.tasks.arrival[:, look.step_index] < NEVER
            look_obs, _, done, cost = look.step(actions)
            total += np.where(counts, cost, 0.0)
            if not done:
                actions = myopic(look, look_obs)
        score = total.reshape(b, size, k).mean(-1)
        score = np.where(sim.available[None, :], score, np.inf)
        return np.argmin(score, axis=-1)

    def _ends(self, sim: PlacementSim) -> np.ndarray:
        """End times of the running pods, drawn given their ages: (B * samples, N, S)."""
        rows = np.repeat(np.arange(sim.batch), self.samples)
        start, held = sim.start[rows], sim.held_cpu[rows]
        running = held > 0
        age = (sim.now[rows][:, None, None] - start)[running]
        end = np.zeros(held.shape)
        end[running] = start[running] + self._duration_given_age(
            sim.held_qos[rows][running], held[running], age
        )
        return end


TASK_FIELDS = ("cpu", "memory", "duration", "arrival", "qos", "attributes")


def main(argv: Sequence[str] | None = None) -> None:
    from metapolicy.sources import load_workload

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="synthetic")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=48)
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args(argv)
    workload = load_workload(args.workload)
    nodes = make_cluster(args.nodes)
    seeds = evaluation_seeds(args.episodes)
    ref, _ = reference_stats(nodes, workload, seeds)
    out = {}
    for true_future in (False, True):
        start = time.perf_counter()
        planner = Planner(nodes, workload, args.horizon, args.samples, true_future)
        stats = episode_stats(planner, nodes, workload, seeds)
        key = "true_future" if true_future else "drawn_future"
        out[key] = {"score": ref.score(stats.returns), **stats.summary()}
        out[key]["seconds"] = time.perf_counter() - start
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
