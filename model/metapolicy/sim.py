"""Batched task-placement simulator (numpy): the one implementation behind training,
evaluation, the baselines and the gymnasium environment.

Each step one task arrives and the agent picks a node for it. Placement cost is the node's
network latency plus a service time that grows like an M/M/1 queue with the node's CPU
utilisation after placement; a task that does not fit is rejected at a cost that grows with its
size. Task streams depend only on the episode seed, never on the actions, so every policy
evaluated with the same seeds sees the same tasks (common random numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metapolicy.cluster import NodeProfile, check_unique
from metapolicy.workload import WorkloadSpec

SERVICE_MS = 2.0  # service time on an idle node: cheap, so close big nodes attract small tasks
MAX_UTILISATION = 0.98  # queueing delay is capped here (u=0.98 -> 50x service time)
REJECT_BASE_MS = 50.0
REJECT_PER_CORE_MS = 100.0  # dropping a big task hurts more than dropping a small one
REWARD_SCALE = 100.0  # reward = -cost_ms / REWARD_SCALE keeps PPO's value targets near 1
FREEING_HORIZON_S = 5.0
CPU_REF, MEMORY_REF, LATENCY_REF = 16.0, 65536.0, 20.0

NODE_FEATURES = 15
COST_FEATURE = 8  # index of the immediate placement cost among the node features
TASK_FEATURES = 9


@dataclass
class Observation:
    """Per-node features in the simulator's node order; masked nodes are all-zero."""

    nodes: np.ndarray  # (B, N, NODE_FEATURES) float32
    task: np.ndarray  # (B, TASK_FEATURES) float32
    mask: np.ndarray  # (B, N) bool: True where a task may be placed


class PlacementSim:
    """`batch` independent episodes on the same cluster, stepped together.

    `available` masks nodes out (a departed node, or one an old policy does not know about);
    all episodes have `workload.episode_tasks` steps, so they finish together.
    """

    def __init__(
        self,
        nodes: Sequence[NodeProfile],
        workload: WorkloadSpec | None = None,
        batch: int = 1,
        available: Sequence[bool] | None = None,
        slots_per_node: int = 96,
    ) -> None:
        self.nodes = check_unique(nodes)
        if not self.nodes:
            raise ValueError("a cluster needs at least one node")
        self.names = [n.name for n in self.nodes]
        self.workload = workload or WorkloadSpec()
        self.batch = batch
        self.cpu = np.array([n.cpu for n in self.nodes])
        self.memory = np.array([n.memory_mib for n in self.nodes])
        self.latency = np.array([n.latency_ms for n in self.nodes])
        self.available = (
            np.ones(len(self.nodes), bool) if available is None else np.asarray(available, bool)
        )
        if not self.available.any():
            raise ValueError("every node is masked out")
        self.slots = slots_per_node
        self._placement: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # Arrival rate is set by the whole cluster's capacity, masked nodes included: a policy
        # that cannot use new nodes faces the load they were added for.
        self.rate = self.workload.load * self.cpu.sum() / self.workload.mean_cpu_seconds()
        self._static = np.stack(
            [
                self.cpu / CPU_REF,
                self.memory / MEMORY_REF,
                self.latency / LATENCY_REF,
            ],
            axis=-1,
        )
        self._relative_size = self.cpu / self.cpu[self.available].max()

    @property
    def size(self) -> int:
        return len(self.nodes)

    # ----- episode generation -------------------------------------------------------------
    def _draw_tasks(self, seeds: Sequence[int]) -> None:
        w = self.workload
        classes = w.task_classes
        weights = np.array([c.weight for c in classes])
        weights = weights / weights.sum()
        shape = (len(seeds), w.episode_tasks)
        self.task_cpu, self.task_memory = np.empty(shape), np.empty(shape)
        self.task_duration, self.arrival = np.empty(shape), np.empty(shape)
        self.burst = np.zeros(shape, bool)
        for b, seed in enumerate(seeds):
            rng = np.random.default_rng(seed)
            kind = rng.choice(len(classes), size=w.episode_tasks, p=weights)
            u = rng.random((3, w.episode_tasks))
            for k, c in enumerate(classes):
                sel = kind == k
                self.task_cpu[b, sel] = c.cpu[0] + u[0, sel] * (c.cpu[1] - c.cpu[0])
                self.task_memory[b, sel] = c.memory_mib[0] + u[1, sel] * (
                    c.memory_mib[1] - c.memory_mib[0]
                )
                self.task_duration[b, sel] = c.duration[0] + u[2, sel] * (
                    c.duration[1] - c.duration[0]
                )
            starts = np.flatnonzero(rng.random(w.episode_tasks) < w.burst_probability)
            for start in starts:
                self.burst[b, start : start + rng.geometric(1 / w.burst_length)] = True
            rate = self.rate * np.where(self.burst[b], w.burst_factor, 1.0)
            self.arrival[b] = np.cumsum(rng.exponential(1.0 / rate))

    def reset(self, seeds: Sequence[int] | int) -> Observation:
        """Start `batch` episodes; an int seed expands to consecutive per-episode seeds."""
        if isinstance(seeds, int | np.integer):
            seeds = [int(seeds) * 100_003 + i for i in range(self.batch)]
        if len(seeds) != self.batch:
            raise ValueError(f"need {self.batch} seeds, got {len(seeds)}")
        self.seeds = list(seeds)
        shape = (self.batch, self.size, self.slots)
        self.end = np.zeros(shape)
        self.held_cpu, self.held_memory = np.zeros(shape), np.zeros(shape)
        self.used_cpu = np.zeros((self.batch, self.size))
        self.used_memory = np.zeros((self.batch, self.size))
        self.step_index = 0
        self._placement = None
        self._draw_tasks(self.seeds)
        return self._observe()

    # ----- dynamics ---------------------------------------------------------------------------
    @property
    def now(self) -> np.ndarray:
        return self.arrival[:, self.step_index]

    def current_task(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = self.step_index
        return self.task_cpu[:, i], self.task_memory[:, i], self.task_duration[:, i]

    def placement(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cost_ms, fits, cpu utilisation after) of placing the current task on each node.

        Computed once per decision: the observation, the step and the heuristics all ask for it
        while the state stands still. Callers must not modify the returned arrays.
        """
        if self._placement is None:
            self._placement = self._compute_placement()
        return self._placement

    def _compute_placement(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cpu, memory, _ = self.current_task()
        cpu_after = (self.used_cpu + cpu[:, None]) / self.cpu
        memory_after = (self.used_memory + memory[:, None]) / self.memory
        has_slot = (self.held_cpu == 0).any(-1)
        fits = (cpu_after <= 1 + 1e-9) & (memory_after <= 1 + 1e-9) & has_slot
        queueing = SERVICE_MS / (1 - np.minimum(cpu_after, MAX_UTILISATION))
        reject = REJECT_BASE_MS + REJECT_PER_CORE_MS * cpu[:, None]
        cost = np.where(fits, self.latency + queueing, reject)
        return cost, fits, cpu_after

    def step(self, actions: np.ndarray) -> tuple[Observation, np.ndarray, bool, np.ndarray]:
        """Place the current tasks; returns (next observation, reward, done, cost_ms).

        Choosing a masked node counts as a rejection: a policy must never do it, and the
        cost makes a bug visible in the score instead of hiding it.
        """
        actions = np.asarray(actions, dtype=np.int64)
        rows = np.arange(self.batch)
        cost_all, fits_all, _ = self.placement()
        cpu, memory, duration = self.current_task()
        allowed = self.available[actions]
        fits = fits_all[rows, actions] & allowed
        reject = REJECT_BASE_MS + REJECT_PER_CORE_MS * cpu
        cost = np.where(fits, cost_all[rows, actions], reject)
        placed = np.flatnonzero(fits)
        if placed.size:
            nodes = actions[placed]
            slot = np.argmax(self.held_cpu[placed, nodes] == 0, axis=-1)
            self.end[placed, nodes, slot] = self.now[placed] + duration[placed]
            self.held_cpu[placed, nodes, slot] = cpu[placed]
            self.held_memory[placed, nodes, slot] = memory[placed]
            self.used_cpu[placed, nodes] += cpu[placed]
            self.used_memory[placed, nodes] += memory[placed]
        self.step_index += 1
        self._placement = None
        done = self.step_index >= self.workload.episode_tasks
        if done:
            self.step_index -= 1  # keep `now` valid; callers reset after done
        else:
            self._release_finished()
        return self._observe(), -cost / REWARD_SCALE, done, cost

    def _release_finished(self) -> None:
        finished = (self.end <= self.now[:, None, None]) & (self.held_cpu > 0)
        if finished.any():
            self.used_cpu -= np.where(finished, self.held_cpu, 0).sum(-1)
            self.used_memory -= np.where(finished, self.held_memory, 0).sum(-1)
            self.held_cpu[finished] = 0
            self.held_memory[finished] = 0
            self.end[finished] = 0
            np.maximum(self.used_cpu, 0, out=self.used_cpu)
            np.maximum(self.used_memory, 0, out=self.used_memory)

    # ----- observation ------------------------------------------------------------------------
    def _observe(self) -> Observation:
        cost, fits, cpu_after = self.placement()
        fits = fits & self.available
        cpu, memory, duration = self.current_task()
        soon = (self.held_cpu * (self.end <= self.now[:, None, None] + FREEING_HORIZON_S)).sum(-1)
        capacity = self.cpu[self.available].sum()
        # The two largest free blocks tell whether a big task could still land somewhere ...
        free = np.where(self.available, self.cpu - self.used_cpu, 0.0)
        largest = np.sort(np.pad(free, ((0, 0), (1, 0))), axis=-1)[:, ::-1][:, :2]
        # ... and, per node, what the largest block would be if this task went there: the one
        # number a reservation rule needs ("do not fill the last home of a big task").
        others = np.where(free >= largest[:, :1], largest[:, 1:], largest[:, :1])
        largest_if_here = np.maximum(others, free - cpu[:, None])
        static = np.broadcast_to(self._static, (self.batch, self.size, 3))
        nodes = np.concatenate(
            [
                static,
                np.stack(
                    [
                        self.used_cpu / self.cpu,
                        self.used_memory / self.memory,
                        (self.cpu - self.used_cpu) / CPU_REF,
                        (self.memory - self.used_memory) / MEMORY_REF,
                        fits,
                        np.minimum(cost / REWARD_SCALE, 10.0),
                        np.minimum(cpu_after, 2.0),
                        soon / self.cpu,
                        np.broadcast_to(self._relative_size, (self.batch, self.size)),
                        (self.cpu - self.used_cpu - cpu[:, None]) / CPU_REF,
                        (self.memory - self.used_memory - memory[:, None]) / MEMORY_REF,
                        largest_if_here / CPU_REF,
                    ],
                    axis=-1,
                ),
            ],
            axis=-1,
        )
        nodes = np.where(self.available[None, :, None], nodes, 0.0).astype(np.float32)
        task = np.stack(
            [
                cpu / CPU_REF,
                memory / MEMORY_REF,
                duration / 30.0,
                self.burst[:, self.step_index],
                self.used_cpu[:, self.available].sum(-1) / capacity,
                fits.mean(-1),
                np.full(self.batch, self.step_index / self.workload.episode_tasks),
                largest[:, 0] / CPU_REF,
                largest[:, 1] / CPU_REF,
            ],
            axis=-1,
        ).astype(np.float32)
        mask = np.broadcast_to(self.available, (self.batch, self.size)).copy()
        return Observation(nodes=nodes, task=task, mask=mask)
