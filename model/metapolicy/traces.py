"""Task streams for the simulator: what arrives, when, how big, with which declared attributes,
and (for the simulator's dynamics only) how long it truly runs.

A task source turns episode seeds into a `TaskBatch`. Streams depend only on the seeds and the
cluster's capacity, never on the actions, so every policy evaluated on the same seeds sees the
same tasks (common random numbers). The true durations in a batch drive when the simulator frees
resources; the policy never sees them (see `features.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from metapolicy.features import ATTRIBUTE_FEATURES, QOS_CLASSES
from metapolicy.trace_files import InvalidTrace, Trace
from metapolicy.workload import WorkloadSpec

# Episode seeds by role. Validation episodes (`evaluation.evaluation_seeds`) and selection
# episodes (`selection.selection_seeds`) come from these ranges; training uses small integers.
# A trace replays validation seeds on its latest windows only and every other seed on earlier
# ones, so a policy is never validated on tasks it trained or was selected on.
VALIDATION_SEED_BASE = 10_000
SELECTION_SEED_BASE = 20_000
SEED_RANGE = 10_000
_GOLDEN = (math.sqrt(5) - 1) / 2  # frac(i * golden) spreads any prefix of episodes evenly


def is_validation_seed(seed: int) -> bool:
    return VALIDATION_SEED_BASE <= seed < VALIDATION_SEED_BASE + SEED_RANGE


@dataclass
class TaskBatch:
    """`B` episodes of `T` tasks each, in arrival order."""

    cpu: np.ndarray  # (B, T) cores requested
    memory: np.ndarray  # (B, T) MiB requested
    duration: np.ndarray  # (B, T) seconds: the truth, for the simulator's dynamics only
    arrival: np.ndarray  # (B, T) seconds, non-decreasing along T
    qos: np.ndarray  # (B, T) int index into features.QOS_CLASSES
    attributes: np.ndarray  # (B, T, ATTRIBUTE_FEATURES) float32, PodAttributes.vector() rows

    @property
    def episode_tasks(self) -> int:
        return self.cpu.shape[1]


@runtime_checkable
class TaskSource(Protocol):
    """Anything that can fill episodes with tasks for a cluster of `capacity_cpu` cores."""

    episode_tasks: int

    def draw(
        self,
        seeds: Sequence[int],
        capacity_cpu: float,
        largest: tuple[float, float] | None = None,
    ) -> TaskBatch:
        """`largest`: (cpu, memory MiB) of the cluster's biggest node, for sources that scale
        task sizes to the cluster."""
        ...


@dataclass(frozen=True)
class SyntheticTasks:
    """The parametric workload of `WorkloadSpec`: task classes, Poisson arrivals at a rate that
    makes the mean cpu demand `load` x capacity, and bursts that multiply that rate."""

    spec: WorkloadSpec

    @property
    def episode_tasks(self) -> int:
        return self.spec.episode_tasks

    def draw(
        self,
        seeds: Sequence[int],
        capacity_cpu: float,
        largest: tuple[float, float] | None = None,
    ) -> TaskBatch:
        w = self.spec
        classes = w.task_classes
        weights = np.array([c.weight for c in classes])
        weights = weights / weights.sum()
        attributes = [c.attributes() for c in classes]
        vectors = np.stack([a.vector() for a in attributes])
        qos = np.array([a.qos_index for a in attributes])
        base_rate = w.load * capacity_cpu / w.mean_cpu_seconds()
        shape = (len(seeds), w.episode_tasks)
        out = TaskBatch(
            cpu=np.empty(shape),
            memory=np.empty(shape),
            duration=np.empty(shape),
            arrival=np.empty(shape),
            qos=np.empty(shape, np.int64),
            attributes=np.empty((*shape, ATTRIBUTE_FEATURES), np.float32),
        )
        for b, seed in enumerate(seeds):
            rng = np.random.default_rng(seed)
            kind = rng.choice(len(classes), size=w.episode_tasks, p=weights)
            u = rng.random((3, w.episode_tasks))
            for k, c in enumerate(classes):
                sel = kind == k
                out.cpu[b, sel] = c.cpu[0] + u[0, sel] * (c.cpu[1] - c.cpu[0])
                out.memory[b, sel] = c.memory_mib[0] + u[1, sel] * (
                    c.memory_mib[1] - c.memory_mib[0]
                )
                out.duration[b, sel] = c.duration[0] + u[2, sel] * (c.duration[1] - c.duration[0])
            out.qos[b] = qos[kind]
            out.attributes[b] = vectors[kind]
            burst = np.zeros(w.episode_tasks, bool)
            starts = np.flatnonzero(rng.random(w.episode_tasks) < w.burst_probability)
            for start in starts:
                burst[start : start + rng.geometric(1 / w.burst_length)] = True
            rate = base_rate * np.where(burst, w.burst_factor, 1.0)
            out.arrival[b] = np.cumsum(rng.exponential(1.0 / rate))
        return out


Workload = WorkloadSpec | TaskSource


def task_source(workload: Workload | None) -> TaskSource:
    """A WorkloadSpec (or None: the default one) as a task source; a source as itself."""
    if workload is None:
        return SyntheticTasks(WorkloadSpec())
    if isinstance(workload, WorkloadSpec):
        return SyntheticTasks(workload)
    if isinstance(workload, TaskSource):
        return workload
    raise TypeError(f"not a workload: {workload!r}")


# ----- replaying a trace ------------------------------------------------------------------------
class KaplanMeier:
    """The product-limit estimate of the run-time distribution from completed and censored run
    times, and draws of a censored task's run time given that it has already run `age` seconds:
    P(D > t | D > age) = S(t) / S(age). Beyond the longest completed run time the estimate says
    nothing: such draws are infinite (the task outlives any episode)."""

    def __init__(self, duration: np.ndarray, censored: np.ndarray) -> None:
        duration, censored = np.asarray(duration, float), np.asarray(censored, bool)
        self.events = int((~censored).sum())
        times, deaths = np.unique(duration[~censored], return_counts=True)
        ordered = np.sort(duration)
        at_risk = len(duration) - np.searchsorted(ordered, times, side="left")
        self.times = times
        self.survival_at = np.cumprod(1.0 - deaths / np.maximum(at_risk, 1))

    def survival(self, t: np.ndarray) -> np.ndarray:
        """S(t) = P(D > t)."""
        index = np.searchsorted(self.times, t, side="right")
        return np.where(index > 0, self.survival_at[np.maximum(index - 1, 0)], 1.0)

    def conditional(self, age: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Run times of tasks already `age` old, from uniforms `u` (inverse transform)."""
        target = u * self.survival(age)
        # first event time whose survival has fallen to the target (survival_at is decreasing)
        index = np.searchsorted(-self.survival_at, -target, side="left")
        found = index < len(self.times)
        return np.where(found, self.times[np.minimum(index, len(self.times) - 1)], np.inf)


@dataclass(frozen=True)
class ReplayScale:
    """How a trace is fitted to one cluster: task sizes times `cpu` and `memory`, arrival gaps
    divided by `compression`."""

    cpu: float
    memory: float
    compression: float


@dataclass(frozen=True, eq=False)
class TraceTasks:
    """Episodes cut from a recorded trace, replayed with the simulator's dynamics.

    - Windows: an episode is `episode_tasks` consecutive arrivals. The trace is split by time:
      the first `1 - validation_fraction` of its tasks give the windows for training and
      selection, the rest the windows for validation; no window crosses the split. A seed
      picks the window (common random numbers): validation and selection seeds spread evenly
      over their part, other seeds uniformly at random.
    - Sizes (`scale_sizes`): cpu and memory requests are each multiplied by one factor, so that
      the trace's `fit_quantile` task (p99 by default) just fits the cluster's biggest node;
      larger tasks fit nowhere, as some pods fit no node of a real cluster.
    - Time (`load`): arrival gaps are divided by one factor for the whole trace, chosen so that
      if every task were placed the mean requested cpu over a training episode would be `load`
      x the cluster's capacity; run times are kept as recorded, so the burstiness of arrivals
      and the shape of run times stay those of the trace. `load=None` replays in real time.
    - Censored tasks (still running when the record ended) get a run time drawn per episode
      from the Kaplan-Meier estimate of their QoS class, given their age (`KaplanMeier`).

    Pickles cleanly (plain arrays and numbers), so settings holding it reach worker processes.
    """

    trace: Trace
    episode_tasks: int = 256
    load: float | None = 0.6
    scale_sizes: bool = True
    fit_quantile: float = 0.99
    validation_fraction: float = 0.25
    _scales: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.validation_fraction < 1:
            raise InvalidTrace(f"validation fraction {self.validation_fraction} is not in (0, 1)")
        if self.load is not None and not self.load > 0:
            raise InvalidTrace(f"load {self.load} must be positive")
        # A short trace gets shorter episodes: each part must hold at least one window.
        window = min(self.episode_tasks, self.boundary, len(self.trace) - self.boundary)
        object.__setattr__(self, "episode_tasks", window)
        if window < MIN_EPISODE_TASKS:
            raise InvalidTrace(
                f"the trace has {len(self.trace)} tasks: too few for episodes of at least "
                f"{MIN_EPISODE_TASKS} tasks with {self.validation_fraction:.0%} kept for "
                "validation"
            )

    # ----- windows ------------------------------------------------------------------------------
    @property
    def boundary(self) -> int:
        """Index of the first validation task."""
        return int(len(self.trace) * (1 - self.validation_fraction))

    @property
    def window(self) -> int:
        """Tasks per episode: `episode_tasks`, lowered at construction if a part of the trace
        is shorter."""
        return self.episode_tasks

    def window_start(self, seed: int) -> int:
        starts_train = self.boundary - self.window + 1
        if is_validation_seed(seed):
            starts = len(self.trace) - self.window - self.boundary + 1
            return self.boundary + int(((seed - VALIDATION_SEED_BASE) * _GOLDEN) % 1.0 * starts)
        if SELECTION_SEED_BASE <= seed < SELECTION_SEED_BASE + SEED_RANGE:
            return int(((seed - SELECTION_SEED_BASE) * _GOLDEN + 0.5) % 1.0 * starts_train)
        return int(np.random.default_rng([seed, 0]).integers(0, starts_train))

    # ----- fitting to a cluster ------------------------------------------------------------------
    def scale(self, capacity_cpu: float, largest: tuple[float, float] | None) -> ReplayScale:
        key = (round(capacity_cpu, 6), largest)
        if key not in self._scales:
            self._scales[key] = self._fit(capacity_cpu, largest)
        return self._scales[key]

    def _fit(self, capacity_cpu: float, largest: tuple[float, float] | None) -> ReplayScale:
        t = self.trace
        cpu_scale = memory_scale = 1.0
        if self.scale_sizes and largest is not None:
            cpu_scale = largest[0] / max(float(np.quantile(t.cpu, self.fit_quantile)), 1e-9)
            memory_scale = largest[1] / max(float(np.quantile(t.memory, self.fit_quantile)), 1e-9)
        if self.load is None:
            return ReplayScale(cpu_scale, memory_scale, 1.0)
        cpu = t.cpu * cpu_scale
        if largest is not None:  # a task that fits no node never holds anything
            cpu = np.where((cpu <= largest[0]) & (t.memory * memory_scale <= largest[1]), cpu, 0.0)
        starts = np.arange(0, self.boundary - self.window + 1, max(1, self.window // 4))
        index = starts[:, None] + np.arange(self.window)[None, :]
        offset = t.arrival[index] - t.arrival[starts][:, None]
        remaining = offset[:, -1:] - offset
        span = offset[:, -1]
        keep = span > 0
        weights, duration = cpu[index][keep], t.duration[index][keep]
        remaining, span = remaining[keep], span[keep]
        if not keep.any():
            return ReplayScale(cpu_scale, memory_scale, 1.0)

        def utilisation(k: float) -> float:
            held = (weights * np.minimum(k * duration, remaining)).sum(-1)
            return float((held / (capacity_cpu * span)).mean())

        low, high = -20.0, 20.0  # log k
        if utilisation(math.exp(high)) < self.load:
            return ReplayScale(cpu_scale, memory_scale, math.exp(high))
        for _ in range(60):
            middle = (low + high) / 2
            low, high = (
                (middle, high) if utilisation(math.exp(middle)) < self.load else (low, middle)
            )
        return ReplayScale(cpu_scale, memory_scale, math.exp((low + high) / 2))

    # ----- TaskSource ---------------------------------------------------------------------------
    def draw(
        self,
        seeds: Sequence[int],
        capacity_cpu: float,
        largest: tuple[float, float] | None = None,
    ) -> TaskBatch:
        t, n = self.trace, self.window
        fit = self.scale(capacity_cpu, largest)
        starts = np.array([self.window_start(int(s)) for s in seeds], np.int64)
        index = starts[:, None] + np.arange(n)[None, :]
        duration = t.duration[index].copy()
        censored = t.censored[index]
        if censored.any():
            for b, seed in enumerate(seeds):
                rows = np.flatnonzero(censored[b])
                if rows.size:
                    u = np.random.default_rng([int(seed), 1]).random(rows.size)
                    qos = t.qos[index[b, rows]]
                    duration[b, rows] = self._estimates().draw(qos, duration[b, rows], u)
        arrival = (t.arrival[index] - t.arrival[starts][:, None]) / fit.compression
        return TaskBatch(
            cpu=t.cpu[index] * fit.cpu,
            memory=t.memory[index] * fit.memory,
            duration=duration,
            arrival=arrival,
            qos=t.qos[index].copy(),
            attributes=t.attributes[index].copy(),
        )

    def _estimates(self) -> _Survival:
        if "survival" not in self._scales:
            self._scales["survival"] = _Survival(self.trace)
        return self._scales["survival"]

    def describe(self) -> dict:
        info = dict(self.trace.info)
        observed = info.get("format") == "observed"
        return {
            "source": "observed" if observed else "trace",
            "format": info.get("format"),
            "tasks": len(self.trace),
            "censored": int(self.trace.censored.sum()),
            "neverScheduled": info.get("never_scheduled", 0),
            "episodeTasks": self.window,
            "validationFromTask": self.boundary,
            "load": self.load,
        }


MIN_EPISODE_TASKS = 16
MIN_EVENTS = 20  # completed run times a QoS class needs for an estimate of its own


class _Survival:
    """Kaplan-Meier estimates per QoS class, the pooled one for classes with few events."""

    def __init__(self, trace: Trace) -> None:
        self.pooled = KaplanMeier(trace.duration, trace.censored)
        self.by_qos = {}
        for k in range(len(QOS_CLASSES)):
            rows = trace.qos == k
            estimate = KaplanMeier(trace.duration[rows], trace.censored[rows])
            if estimate.events >= MIN_EVENTS:
                self.by_qos[k] = estimate

    def draw(self, qos: np.ndarray, age: np.ndarray, u: np.ndarray) -> np.ndarray:
        out = np.empty(len(age))
        for i in range(len(age)):
            estimate = self.by_qos.get(int(qos[i]), self.pooled)
            out[i] = estimate.conditional(age[i : i + 1], u[i : i + 1])[0]
        return out
