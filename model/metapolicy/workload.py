"""The synthetic task model: task classes (sizes, durations, declared attributes), load level
and bursts. `traces.SyntheticTasks` draws episodes from it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from metapolicy.features import PodAttributes


class InvalidWorkload(ValueError):
    """A workload description that cannot be simulated."""


def _range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or high < low:
        raise InvalidWorkload(f"{name} range {value!r} must satisfy 0 < min <= max")
    return low, high


@dataclass(frozen=True)
class TaskClass:
    name: str
    weight: float
    cpu: tuple[float, float]  # cores
    memory_mib: tuple[float, float]
    duration: tuple[float, float]  # seconds: the truth, never shown to the policy
    # What the class's pods declare at creation (see features.PodAttributes): the only
    # duration signal a scheduler has. duration_hint is the annotation value, if any.
    qos: str = "Burstable"
    owner: str = "other"
    gpu: float = 0.0
    priority: int = 0
    duration_hint: float | None = None

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise InvalidWorkload(f"task class {self.name}: weight must be positive")
        for attr in ("cpu", "memory_mib", "duration"):
            object.__setattr__(self, attr, _range(f"{self.name}.{attr}", getattr(self, attr)))
        try:
            self.attributes()
        except ValueError as error:
            raise InvalidWorkload(f"task class {self.name}: {error}") from None

    def attributes(self) -> PodAttributes:
        return PodAttributes(
            qos=self.qos,
            gpu=self.gpu,
            priority=self.priority,
            owner=self.owner,
            duration_hint_s=self.duration_hint,
        )


# Many small short tasks and a few big long ones that only fit the biggest nodes:
# placing the small ones well now is what keeps room for the big ones later. The small ones
# come as short batch jobs and longer-lived service replicas of the same sizes (together the
# same 2-10 s uniform as one class): what they declare is all that tells them apart.
DEFAULT_TASK_CLASSES = (
    TaskClass(
        "batch", 0.39, cpu=(0.25, 1.0), memory_mib=(256, 2048), duration=(2, 6), owner="batch"
    ),
    TaskClass(
        "web",
        0.39,
        cpu=(0.25, 1.0),
        memory_mib=(256, 2048),
        duration=(6, 10),
        qos="Guaranteed",
        owner="service",
    ),
    TaskClass(
        "medium", 0.18, cpu=(1.0, 3.0), memory_mib=(2048, 8192), duration=(5, 20), owner="service"
    ),
    TaskClass(
        "large",
        0.04,
        cpu=(6.0, 12.0),
        memory_mib=(16384, 40960),
        duration=(10, 30),
        qos="Guaranteed",
        owner="stateful",
    ),
)


@dataclass(frozen=True)
class WorkloadSpec:
    """Arrivals are Poisson with a rate set so the mean CPU demand is `load` x cluster capacity;
    bursts multiply that rate by `burst_factor` for about `burst_length` tasks."""

    load: float = 0.6
    burst_factor: float = 3.0
    burst_probability: float = 0.02
    burst_length: int = 20
    episode_tasks: int = 256
    task_classes: tuple[TaskClass, ...] = field(default=DEFAULT_TASK_CLASSES)

    def __post_init__(self) -> None:
        checks = (
            (self.load > 0, "load must be positive"),
            (self.burst_factor >= 1, "burstFactor must be >= 1"),
            (0 <= self.burst_probability <= 1, "burstProbability must be in [0, 1]"),
            (self.burst_length >= 1, "burstLength must be >= 1"),
            (self.episode_tasks >= 1, "episodeTasks must be >= 1"),
            (len(self.task_classes) > 0, "at least one task class is needed"),
        )
        for ok, message in checks:
            if not ok:
                raise InvalidWorkload(message)

    def mean_cpu_seconds(self) -> float:
        """Expected cpu x duration of one task (uniform draws are independent)."""
        weights = np.array([c.weight for c in self.task_classes])
        per_class = [np.mean(c.cpu) * np.mean(c.duration) for c in self.task_classes]
        return float(np.dot(weights / weights.sum(), per_class))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkloadSpec:
        data = dict(data)
        if data.get("task_classes"):
            data["task_classes"] = tuple(
                c if isinstance(c, TaskClass) else TaskClass(**c) for c in data["task_classes"]
            )
        else:
            data.pop("task_classes", None)
        return cls(**data)
