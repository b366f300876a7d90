"""MetaPolicy spec -> library settings, with the CRD's defaults and clear errors.

A real API server applies the CRD's defaults and validation before the operator sees an
object; the emulator does neither, and an old object may predate a schema change. So the
operator applies the same defaults (a test keeps them equal to the CRD's) and re-checks what it
relies on, naming the offending field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from metapolicy.adapt import ON_INCONCLUSIVE, AdaptationSettings
from metapolicy.device import DEVICES, device_problem
from metapolicy.policy import ARCHITECTURES
from metapolicy.ppo import FREEZE_MODES
from metapolicy.strategies import STRATEGIES
from metapolicy.trace_files import FORMATS as TRACE_FILE_FORMATS
from metapolicy.training import TrainingSettings
from metapolicy.workload import InvalidWorkload, TaskClass, WorkloadSpec

DEFAULTS: dict[str, Any] = {
    "maxNodes": 20,
    "hiddenSize": 64,
    "architecture": "node-set",
    "strategy": "auto",
    "paused": False,
    "adaptation": {
        "settleSeconds": 10,
        "budgetSteps": 50_000,
        "freeze": "gradual",
        "maxAttempts": 3,
        "backoffSeconds": 30,
    },
    "validation": {
        "episodes": 16,
        "minRetention": 0.9,
        "onInconclusive": "pause",
        "rollback": {"enabled": True},
    },
    "workload": {
        "load": 0.6,
        "burstFactor": 3.0,
        "burstProbability": 0.02,
        "burstLength": 20,
        "episodeTasks": 256,
        "source": "synthetic",
        "minObservedTasks": 1000,
        "recording": {"maxTasks": 50_000, "maxAgeSeconds": 604_800, "flushSeconds": 30},
    },
    # budgetSteps: by architecture (metapolicy.training.DEFAULT_STEPS)
    "training": {"seed": 0, "backend": "inProcess", "device": "auto"},
    "storage": {"backend": "configmap", "keepVersions": 5},
    "serving": {"mode": "active"},
}
SERVING_MODES = ("active", "shadow", "off")


class InvalidSpec(ValueError):
    """The spec cannot be used; the message names the field."""


#: The CRD's maxNodes maximum: node-set trains and validates on sub-clusters whatever N is,
#: and a 5,000-node checkpoint (hidden 64) fits one ConfigMap.
MAX_NODES = 5_000


WORKLOAD_SOURCES = ("synthetic", "trace", "observed")
TRACE_FORMATS = ("auto", *TRACE_FILE_FORMATS)


@dataclass(frozen=True)
class WorkloadSource:
    """spec.workload.source and what it needs. `training.workload` and `adaptation.workload`
    hold the synthetic model; the controller swaps in the resolved source
    (`metapolicy_operator.workloads.resolve_workload`)."""

    source: str = "synthetic"
    trace_path: str | None = None
    trace_format: str = "auto"
    min_observed_tasks: int = 1000
    max_tasks: int = 50_000
    max_age_seconds: float = 604_800.0
    flush_seconds: float = 30.0


TRAINING_BACKENDS = ("inProcess", "job")


@dataclass(frozen=True)
class TrainingJob:
    """spec.training.job: the Kubernetes Job that trains when spec.training.backend is job."""

    image: str | None = None  # None: the operator's METAPOLICY_JOB_IMAGE
    service_account: str = "metapolicy-trainer"
    deadline_seconds: int = 3600
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class PolicySpec:
    selector: Mapping | None
    pod_selector: Mapping | None  # None: the policy places no pod
    namespaces: tuple[str, ...] | None  # None: the MetaPolicy's own namespace
    max_nodes: int
    architecture: str
    training: TrainingSettings
    adaptation: AdaptationSettings
    settle_seconds: float
    max_attempts: int
    backoff_seconds: float
    storage_backend: str
    storage_path: str | None
    keep_versions: int
    serving_mode: str = "active"  # SERVING_MODES: what `metapolicy serve` does with its pods
    paused: bool = False  # no training or adaptation starts; serving goes on
    workload_source: WorkloadSource = WorkloadSource()
    training_backend: str = "inProcess"
    training_job: TrainingJob = TrainingJob()


def with_defaults(spec: Mapping | None, defaults: Mapping = DEFAULTS) -> dict:
    """Defaults fill absent fields of objects that exist, recursively (API-server semantics)."""
    merged = dict(spec or {})
    for key, default in defaults.items():
        if isinstance(default, Mapping):
            value = merged.get(key)
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise InvalidSpec(f"spec.{key} must be an object, got {value!r}")
            merged[key] = with_defaults(value, default)
        elif merged.get(key) is None:
            merged[key] = default
    return merged


def _at(spec: Mapping, path: str) -> Any:
    value: Any = spec
    for part in path.split("."):
        value = value[part]
    return value


def _number(spec: Mapping, path: str, low: float, high: float, integer: bool = False) -> Any:
    value = _at(spec, path)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidSpec(f"spec.{path}={value!r} is not a number")
    if integer and value != int(value):
        raise InvalidSpec(f"spec.{path}={value!r} must be a whole number")
    if not low <= value <= high:
        raise InvalidSpec(f"spec.{path}={value!r} is outside [{low}, {high}]")
    return int(value) if integer else float(value)


def _choice(spec: Mapping, path: str, options) -> str:
    value = _at(spec, path)
    if value not in options:
        raise InvalidSpec(f"spec.{path}={value!r} is not one of {', '.join(options)}")
    return value


def _flag(spec: Mapping, path: str) -> bool:
    value = _at(spec, path)
    if not isinstance(value, bool):
        raise InvalidSpec(f"spec.{path}={value!r} is not true or false")
    return value


def _task_classes(items) -> tuple[TaskClass, ...] | None:
    if not items:
        return None
    classes = []
    for i, item in enumerate(items):
        try:
            classes.append(
                TaskClass(
                    name=item["name"],
                    weight=float(item["weight"]),
                    cpu=_range(item.get("cpu"), (0.25, 1.0)),
                    memory_mib=_range(item.get("memoryMiB"), (256.0, 2048.0)),
                    duration=_range(item.get("durationSeconds"), (2.0, 10.0)),
                )
            )
        except (KeyError, TypeError, ValueError, InvalidWorkload) as error:
            raise InvalidSpec(f"spec.workload.taskClasses[{i}]: {error}") from error
    return tuple(classes)


def _range(value: Mapping | None, default: tuple[float, float]) -> tuple[float, float]:
    return default if value is None else (float(value["min"]), float(value["max"]))


def _workload_source(spec: Mapping) -> WorkloadSource:
    source = _choice(spec, "workload.source", WORKLOAD_SOURCES)
    trace = spec["workload"].get("trace") or {}
    if not isinstance(trace, Mapping):
        raise InvalidSpec(f"spec.workload.trace must be an object, got {trace!r}")
    path, trace_format = trace.get("path"), trace.get("format") or "auto"
    if path is not None and (not isinstance(path, str) or not path):
        raise InvalidSpec(f"spec.workload.trace.path={path!r} is not a file path")
    if trace_format not in TRACE_FORMATS:
        raise InvalidSpec(
            f"spec.workload.trace.format={trace_format!r} is not one of {', '.join(TRACE_FORMATS)}"
        )
    if source == "trace" and not path:
        raise InvalidSpec("spec.workload.trace.path is required when spec.workload.source is trace")
    rec = "workload.recording."
    return WorkloadSource(
        source=source,
        trace_path=path,
        trace_format=trace_format,
        min_observed_tasks=_number(spec, "workload.minObservedTasks", 16, 1_000_000, True),
        max_tasks=_number(spec, rec + "maxTasks", 100, 1_000_000, integer=True),
        max_age_seconds=_number(spec, rec + "maxAgeSeconds", 3_600, 31_536_000, integer=True),
        flush_seconds=_number(spec, rec + "flushSeconds", 1, 3_600, integer=True),
    )


def parse_spec(raw: Mapping | None) -> PolicySpec:
    """Validate and translate; raises InvalidSpec naming the first bad field."""
    spec = with_defaults(raw)
    architecture = _choice(spec, "architecture", tuple(ARCHITECTURES))
    strategy = _choice(spec, "strategy", ("auto", *STRATEGIES))
    validation = spec["validation"]
    freeze = _choice(spec, "adaptation.freeze", FREEZE_MODES)
    max_nodes = _number(spec, "maxNodes", 1, MAX_NODES, integer=True)
    limit = ARCHITECTURES[architecture].max_slots
    if limit is not None and max_nodes > limit:
        raise InvalidSpec(
            f"spec.maxNodes={max_nodes} exceeds {limit}, the most a {architecture} policy "
            "supports (its input layer has a block per node); use architecture node-set for "
            f"bigger clusters, or maxNodes <= {limit}"
        )
    hidden = _number(spec, "hiddenSize", 8, 1024, integer=True)
    w = spec["workload"]
    try:
        workload = WorkloadSpec(
            load=_number(spec, "workload.load", 0.05, 3),
            burst_factor=_number(spec, "workload.burstFactor", 1, 20),
            burst_probability=_number(spec, "workload.burstProbability", 0, 1),
            burst_length=_number(spec, "workload.burstLength", 1, 10_000, integer=True),
            episode_tasks=_number(spec, "workload.episodeTasks", 16, 100_000, integer=True),
            **({"task_classes": c} if (c := _task_classes(w.get("taskClasses"))) else {}),
        )
    except InvalidWorkload as error:
        raise InvalidSpec(f"spec.workload: {error}") from error
    seed = _number(spec, "training.seed", 0, 2**32 - 1, integer=True)
    device = _device(spec)
    storage = spec["storage"]
    backend = _choice(spec, "storage.backend", ("configmap", "filesystem"))
    path = storage.get("path")
    if backend == "filesystem" and not path:
        raise InvalidSpec("spec.storage.path is required when spec.storage.backend is filesystem")
    if backend == "configmap" and path:
        raise InvalidSpec("spec.storage.path is only allowed with spec.storage.backend filesystem")
    selector = spec.get("nodeSelector")
    if selector is not None and not isinstance(selector, Mapping):
        raise InvalidSpec(f"spec.nodeSelector must be a label selector, got {selector!r}")
    pod_selector = spec.get("podSelector")
    if pod_selector is not None and not isinstance(pod_selector, Mapping):
        raise InvalidSpec(f"spec.podSelector must be a label selector, got {pod_selector!r}")
    namespaces = spec.get("namespaces")
    if namespaces is not None and (
        not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces)
    ):
        raise InvalidSpec(f"spec.namespaces must be a list of names, got {namespaces!r}")
    return PolicySpec(
        selector=selector,
        pod_selector=pod_selector,
        namespaces=None if namespaces is None else tuple(namespaces),
        max_nodes=max_nodes,
        architecture=architecture,
        training=TrainingSettings(
            architecture=architecture,
            hidden=hidden,
            steps=(
                None
                if spec["training"].get("budgetSteps") is None
                else _number(spec, "training.budgetSteps", 1_000, 100_000_000, integer=True)
            ),
            seed=seed,
            episodes=_number(spec, "validation.episodes", 2, 1_000, integer=True),
            max_nodes=max_nodes,
            workload=workload,
            device=device,
        ),
        adaptation=AdaptationSettings(
            strategy=strategy,
            budget_steps=_number(spec, "adaptation.budgetSteps", 0, 10_000_000, integer=True),
            freeze=freeze,
            episodes=_number(spec, "validation.episodes", 2, 1_000, integer=True),
            min_retention=_number(spec, "validation.minRetention", 0, 2),
            rollback=bool(validation["rollback"]["enabled"]),
            on_inconclusive=_choice(spec, "validation.onInconclusive", ON_INCONCLUSIVE),
            max_nodes=max_nodes,
            seed=seed,
            workload=workload,
            device=device,
        ),
        settle_seconds=_number(spec, "adaptation.settleSeconds", 0, 3_600),
        max_attempts=_number(spec, "adaptation.maxAttempts", 1, 10, integer=True),
        backoff_seconds=_number(spec, "adaptation.backoffSeconds", 0, 86_400),
        storage_backend=backend,
        storage_path=path,
        keep_versions=_number(spec, "storage.keepVersions", 1, 100, integer=True),
        workload_source=_workload_source(spec),
        serving_mode=_choice(spec, "serving.mode", SERVING_MODES),
        paused=_flag(spec, "paused"),
        training_backend=_choice(spec, "training.backend", TRAINING_BACKENDS),
        training_job=_training_job(spec["training"].get("job") or {}),
    )


def _device(spec: Mapping) -> str:
    """spec.training.device; `cuda` must exist where training runs: here, unless a Job
    trains (its pod checks at start, and says so in the Job's result)."""
    device = _choice(spec, "training.device", DEVICES)
    if spec["training"].get("backend") != "job":
        problem = device_problem(device, "spec.training.device")
        if problem is not None:
            raise InvalidSpec(problem)
    return device


def _training_job(job: Mapping) -> TrainingJob:
    if not isinstance(job, Mapping):
        raise InvalidSpec(f"spec.training.job must be an object, got {job!r}")
    deadline = job.get("deadlineSeconds", TrainingJob.deadline_seconds)
    if isinstance(deadline, bool) or not isinstance(deadline, int) or not 60 <= deadline <= 604_800:
        raise InvalidSpec(f"spec.training.job.deadlineSeconds={deadline!r} is outside [60, 604800]")
    for key in ("resources", "nodeSelector"):
        if not isinstance(job.get(key) or {}, Mapping):
            raise InvalidSpec(f"spec.training.job.{key} must be an object")
    if not isinstance(job.get("tolerations") or [], list):
        raise InvalidSpec("spec.training.job.tolerations must be a list")
    return TrainingJob(
        image=job.get("image") or None,
        service_account=job.get("serviceAccountName") or TrainingJob.service_account,
        deadline_seconds=deadline,
        resources=dict(job.get("resources") or {}),
        node_selector=dict(job.get("nodeSelector") or {}),
        tolerations=tuple(job.get("tolerations") or ()),
    )
