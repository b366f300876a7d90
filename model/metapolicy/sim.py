"""Batched task-placement simulator (numpy): the one implementation behind training,
evaluation, the baselines and the gymnasium environment.

Each step one task arrives and the agent picks a node for it. Placement cost is the node's
network latency plus a service time that grows like an M/M/1 queue with the node's CPU
utilisation after placement; a task that does not fit is rejected at a cost that grows with its
size (`features.placement`). Agents choose among the nodes a task fits while any does
(`Observation.choices`, kube-scheduler's filter), so a rejection means it fits nowhere; only
random, the scale's zero, and a rollback drill ignore the filter. Task streams depend only on
the episode seed, never on the actions, so every policy evaluated with the same seeds sees the
same tasks (common random numbers).

The simulator knows each task's true duration, to free its resources when it ends; the
observation it hands the policy is built by `features.observe` from what a scheduler sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metapolicy import features
from metapolicy.cluster import NodeProfile, check_unique
from metapolicy.features import PRESSURE_WINDOW, REWARD_SCALE, Observation, rejection_cost
from metapolicy.subclusters import SubClusters
from metapolicy.traces import TaskBatch, Workload, task_source

# Pod slots per node at the start of an episode: a multiple of 8 (numpy sums 8 lanes at a time,
# so sums over slots come out bit for bit as over all of them), doubled as nodes fill up.
_FIRST_SLOTS = 16


class PlacementSim:
    """`batch` independent episodes on the same cluster, stepped together.

    `available` masks nodes out (a departed node, or one an old policy does not know about);
    all episodes have `episode_tasks` steps, so they finish together.

    Given `SubClusters` instead of a node list, every episode plays on its own sub-cluster
    (`members`: which nodes, drawn by the episode seed unless `reset` is handed them), and the
    node arrays (`cpu`, `available`, ...) are (batch, size) instead of (N,).

    `observation_rows`: the observations `reset` and `step` return cover only the first that
    many episodes; the others are played by agents that read the simulator (the heuristics),
    and building their observations would be most of the cost of evaluating against them.
    """

    def __init__(
        self,
        nodes: Sequence[NodeProfile],
        workload: Workload | None = None,
        batch: int = 1,
        available: Sequence[bool] | None = None,
        slots_per_node: int = 96,
        observation_rows: int | None = None,
    ) -> None:
        self.subclusters = nodes if isinstance(nodes, SubClusters) else None
        self.nodes = check_unique(nodes)
        if not self.nodes:
            raise ValueError("a cluster needs at least one node")
        self.names = [n.name for n in self.nodes]
        self.source = task_source(workload)
        self.batch = batch
        self.cpu = np.array([n.cpu for n in self.nodes])
        self.memory = np.array([n.memory_mib for n in self.nodes])
        self.latency = np.array([n.latency_ms for n in self.nodes])
        self.available = (
            np.ones(len(self.nodes), bool) if available is None else np.asarray(available, bool)
        )
        if not self.available.any():
            raise ValueError("every node is masked out")
        self.members: np.ndarray | None = None  # (batch, size) node indices on sub-clusters
        self._whole = (self.cpu, self.memory, self.latency, self.available)
        self.slots = slots_per_node
        if observation_rows is not None and not 0 < observation_rows <= batch:
            raise ValueError(f"observation_rows must be in 1..{batch}, got {observation_rows}")
        self.observation_rows = observation_rows
        self._slot_cells: dict[int, np.ndarray] = {}
        self._placement: features.Placement | None = None

    @property
    def size(self) -> int:
        """Nodes per episode: the cluster's, or a sub-cluster's."""
        return len(self.nodes) if self.subclusters is None else self.subclusters.size

    @property
    def episode_tasks(self) -> int:
        return self.source.episode_tasks

    def reset(self, seeds: Sequence[int] | int, members: np.ndarray | None = None) -> Observation:
        """Start `batch` episodes; an int seed expands to consecutive per-episode seeds.
        On sub-clusters, `members` (batch, size) overrides the draw by seed (training walks
        through the nodes in turn, `SubClusters.in_turn`)."""
        if isinstance(seeds, int | np.integer):
            seeds = [int(seeds) * 100_003 + i for i in range(self.batch)]
        if len(seeds) != self.batch:
            raise ValueError(f"need {self.batch} seeds, got {len(seeds)}")
        self.seeds = list(seeds)
        capacity, largest = self._draw_subclusters(members)
        # Pod slots per node grow on demand up to `slots` (see `_make_room`): most nodes hold a
        # few pods, and every per-step operation runs over all slots.
        shape = (self.batch, self.size, min(_FIRST_SLOTS, self.slots))
        self.end = np.zeros(shape)  # true end times: dynamics only, never observed
        self.start = np.zeros(shape)
        self.held_cpu, self.held_memory = np.zeros(shape), np.zeros(shape)
        self.held_qos = np.zeros(shape, np.int64)
        self.used_cpu = np.zeros((self.batch, self.size))
        self.used_memory = np.zeros((self.batch, self.size))
        self.step_index = 0
        self._placement = None
        # Arrival rate is set by the whole cluster's capacity, masked nodes included: a policy
        # that cannot use new nodes faces the load they were added for.
        self.tasks: TaskBatch = self.source.draw(self.seeds, capacity, largest)
        gap = np.full((self.batch, PRESSURE_WINDOW - 1), np.nan)
        self._arrivals = np.concatenate([gap, self.tasks.arrival], axis=1)
        return self._observe()

    def _draw_subclusters(self, members: np.ndarray | None) -> tuple[float, tuple[float, float]]:
        """Node arrays for this batch of episodes; -> (capacity, largest node) for the tasks."""
        cpu, memory, latency, available = self._whole
        sub = self.subclusters
        if sub is None:
            return float(cpu.sum()), (float(cpu.max()), float(memory.max()))
        members = sub.for_seeds(self.seeds) if members is None else np.asarray(members, np.int64)
        if members.shape != (self.batch, sub.size):
            raise ValueError(f"members must be {(self.batch, sub.size)}, got {members.shape}")
        self.members = members
        self.cpu, self.memory, self.latency = cpu[members], memory[members], latency[members]
        self.available = available[members]
        if not self.available.any(-1).all():
            raise ValueError("a sub-cluster has every node masked out")
        return sub.capacity, sub.largest

    def allowed(self, actions: np.ndarray) -> np.ndarray:
        """(batch,) whether each episode's chosen node may be used at all."""
        if self.available.ndim == 1:
            return self.available[actions]
        return self.available[np.arange(self.batch), actions]

    # ----- dynamics ---------------------------------------------------------------------------
    @property
    def now(self) -> np.ndarray:
        return self.tasks.arrival[:, self.step_index]

    def current_task(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cpu, memory, true duration) of the current tasks; the duration is for dynamics."""
        i = self.step_index
        return self.tasks.cpu[:, i], self.tasks.memory[:, i], self.tasks.duration[:, i]

    def scheduler_view(
        self, rows: int | None = None
    ) -> tuple[features.ClusterState, features.PendingPods]:
        """The state as a scheduler sees it: requests, ages and attributes, no end times; of
        the first `rows` episodes only, if given."""
        i, b = self.step_index, slice(rows)

        def per_node(values: np.ndarray) -> np.ndarray:  # (N,), or (batch, N) on sub-clusters
            return values if values.ndim == 1 else values[b]

        state = features.ClusterState(
            cpu=per_node(self.cpu),
            memory=per_node(self.memory),
            latency=per_node(self.latency),
            available=per_node(self.available),
            requested_cpu=self.used_cpu[b],
            requested_memory=self.used_memory[b],
            has_room=self._has_room()[b],
            pod_node=self._cells(rows or self.batch),
            pod_cpu=self.held_cpu[b].reshape(-1),
            pod_start=self.start[b].reshape(-1),
            pod_qos=self.held_qos[b].reshape(-1),
        )
        pods = features.PendingPods(
            cpu=self.tasks.cpu[b, i],
            memory=self.tasks.memory[b, i],
            attributes=self.tasks.attributes[b, i],
            now=self.tasks.arrival[b, i],
            recent_arrivals=self._arrivals[b, i : i + PRESSURE_WINDOW],
        )
        return state, pods

    def choices(self) -> np.ndarray:
        """(batch, N) `Observation.choices` from the simulator: the available nodes the
        current task fits, or every available node when it fits none."""
        _, fits, _ = self.placement()
        available = np.broadcast_to(self.available, fits.shape)
        fits = fits & available
        return np.where(fits.any(-1, keepdims=True), fits, available)

    def placement(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cost_ms, fits, cpu utilisation after) of placing the current task on each node.

        Computed once per decision: the observation, the step and the heuristics all ask for it
        while the state stands still. Callers must not modify the returned arrays.
        """
        where = self._where()
        return where.cost, where.fits, where.cpu_after

    def _where(self) -> features.Placement:
        if self._placement is None:
            self._placement = features.placement(*self.scheduler_view())
        return self._placement

    def step(self, actions: np.ndarray) -> tuple[Observation, np.ndarray, bool, np.ndarray]:
        """Place the current tasks; returns (next observation, reward, done, cost_ms).

        Choosing a masked node counts as a rejection: a policy must never do it, and the
        cost makes a bug visible in the score instead of hiding it.
        """
        actions = np.asarray(actions, dtype=np.int64)
        rows = np.arange(self.batch)
        cost_all, fits_all, _ = self.placement()
        cpu, memory, duration = self.current_task()
        allowed = self.allowed(actions)
        fits = fits_all[rows, actions] & allowed
        cost = np.where(fits, cost_all[rows, actions], rejection_cost(cpu))
        placed = np.flatnonzero(fits)
        if placed.size:
            nodes = actions[placed]
            self._make_room(placed, nodes)
            slot = np.argmax(self.held_cpu[placed, nodes] == 0, axis=-1)
            self.end[placed, nodes, slot] = self.now[placed] + duration[placed]
            self.start[placed, nodes, slot] = self.now[placed]
            self.held_cpu[placed, nodes, slot] = cpu[placed]
            self.held_memory[placed, nodes, slot] = memory[placed]
            self.held_qos[placed, nodes, slot] = self.tasks.qos[placed, self.step_index]
            self.used_cpu[placed, nodes] += cpu[placed]
            self.used_memory[placed, nodes] += memory[placed]
        self.step_index += 1
        self._placement = None
        done = self.step_index >= self.episode_tasks
        if done:
            self.step_index -= 1  # keep `now` valid; callers reset after done
        else:
            self._release_finished()
        return self._observe(), -cost / REWARD_SCALE, done, cost

    # ----- pod slots ----------------------------------------------------------------------------
    def _cells(self, rows: int) -> np.ndarray:
        """Pod b*N*S + n*S + s of the flattened slot arrays of the first `rows` episodes sits
        on cell b*N + n (kept until the slot arrays change shape, whoever changed them)."""
        size = rows * self.size * self.held_cpu.shape[-1]
        cells = self._slot_cells.get(rows)
        if cells is None or cells.size != size:
            cells = np.repeat(np.arange(rows * self.size), self.held_cpu.shape[-1])
            self._slot_cells[rows] = cells
        return cells

    def _has_room(self) -> np.ndarray:
        """(batch, size): room for one more pod, as if every node had all `slots` slots."""
        if self.held_cpu.shape[-1] < self.slots:  # fewer pods than that on every node
            return np.ones(self.used_cpu.shape, bool)
        return (self.held_cpu == 0).any(-1)

    def _make_room(self, rows: np.ndarray, nodes: np.ndarray) -> None:
        """Add empty slots (doubling, up to `slots`) when a node about to get a pod has none
        free. Slots keep their places, so pods sit and are summed as with all slots up front."""
        while (self.held_cpu[rows, nodes] != 0).all(-1).any():
            have = self.held_cpu.shape[-1]
            more = min(2 * have, self.slots) - have
            if more <= 0:
                return
            pad = ((0, 0), (0, 0), (0, more))
            self.end, self.start = np.pad(self.end, pad), np.pad(self.start, pad)
            self.held_cpu, self.held_memory = (
                np.pad(self.held_cpu, pad),
                np.pad(self.held_memory, pad),
            )
            self.held_qos = np.pad(self.held_qos, pad)

    def _release_finished(self) -> None:
        finished = (self.end <= self.now[:, None, None]) & (self.held_cpu > 0)
        if finished.any():
            self.used_cpu -= np.where(finished, self.held_cpu, 0).sum(-1)
            self.used_memory -= np.where(finished, self.held_memory, 0).sum(-1)
            self.held_cpu[finished] = 0
            self.held_memory[finished] = 0
            self.end[finished] = 0
            self.start[finished] = 0
            np.maximum(self.used_cpu, 0, out=self.used_cpu)
            np.maximum(self.used_memory, 0, out=self.used_memory)

    def _observe(self) -> Observation:
        rows = self.observation_rows
        if rows is None:
            state, pods = self.scheduler_view()
            if self._placement is None:  # one scheduler view per decision, not two
                self._placement = features.placement(state, pods)
            where = self._placement
        else:  # the placement of every episode (the step's cost), the features of a few
            whole = self._where()
            state, pods = self.scheduler_view(rows)
            where = features.Placement(whole.cost[:rows], whole.fits[:rows], whole.cpu_after[:rows])
        obs = features.observe(state, pods, where)
        obs.members = None if self.members is None else self.members[:rows]
        return obs
