"""Task streams for the simulator: what arrives, when, how big, with which declared attributes,
and (for the simulator's dynamics only) how long it truly runs.

A task source turns episode seeds into a `TaskBatch`. Streams depend only on the seeds and the
cluster's capacity, never on the actions, so every policy evaluated on the same seeds sees the
same tasks (common random numbers). The true durations in a batch drive when the simulator frees
resources; the policy never sees them (see `features.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from metapolicy.features import ATTRIBUTE_FEATURES
from metapolicy.workload import WorkloadSpec


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

    def draw(self, seeds: Sequence[int], capacity_cpu: float) -> TaskBatch: ...


@dataclass(frozen=True)
class SyntheticTasks:
    """The parametric workload of `WorkloadSpec`: task classes, Poisson arrivals at a rate that
    makes the mean cpu demand `load` x capacity, and bursts that multiply that rate."""

    spec: WorkloadSpec

    @property
    def episode_tasks(self) -> int:
        return self.spec.episode_tasks

    def draw(self, seeds: Sequence[int], capacity_cpu: float) -> TaskBatch:
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
