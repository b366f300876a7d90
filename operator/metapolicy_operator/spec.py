"""MetaPolicy spec -> library settings, with the CRD's defaults and clear errors.

The CRD is the one place defaults and ranges are written: a real API server applies them
before the operator sees an object, but an object may predate a schema change, so the operator
applies the same schema itself (crd_schema: structural defaulting, pruning, then JSON Schema
validation with `jsonschema`) and names the offending field. What the schema cannot say (a
rule across fields, a device that must exist here) is checked below.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from metapolicy.adapt import AdaptationSettings
from metapolicy.device import device_problem
from metapolicy.policy import ARCHITECTURES
from metapolicy.trace_files import FORMATS as TRACE_FILE_FORMATS
from metapolicy.training import TrainingSettings
from metapolicy.workload import InvalidWorkload, TaskClass, WorkloadSpec
from metapolicy_operator import crd_schema

SPEC_SCHEMA = crd_schema.spec_schema()
#: What an empty spec becomes: the CRD's defaults (budgetSteps has none: by architecture).
DEFAULTS: dict[str, Any] = crd_schema.leaf_defaults(SPEC_SCHEMA)
SERVING_MODES = ("active", "shadow", "off")


class InvalidSpec(ValueError):
    """The spec cannot be used; the message names the field."""


#: The CRD's maxNodes maximum: node-set trains and validates on sub-clusters whatever N is,
#: and a 5,000-node checkpoint (hidden 64) fits one ConfigMap.
MAX_NODES: int = SPEC_SCHEMA["properties"]["maxNodes"]["maximum"]


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


def with_defaults(spec: Mapping | None) -> dict:
    """The spec as the API server stores it: unknown fields pruned, defaults filled (absent
    fields of objects that exist, recursively)."""
    if spec is not None and not isinstance(spec, Mapping):
        raise InvalidSpec(f"spec must be an object, got {spec!r}")
    merged = copy.deepcopy(dict(spec or {}))
    crd_schema.prune(merged, SPEC_SCHEMA)
    return crd_schema.apply_defaults(merged, SPEC_SCHEMA)


def check_schema(spec: Mapping) -> None:
    """The first error against the CRD's schema (types, enums, ranges, patterns), if any."""
    for where, value in _numbers(spec):
        if not math.isfinite(value):
            raise InvalidSpec(f"spec{where}={value!r} is not a number")
    errors = crd_schema.schema_errors(spec, SPEC_SCHEMA)
    if errors:
        raise InvalidSpec(_message(errors[0]))


def _numbers(value: Any, where: str = "") -> Iterator[tuple[str, float]]:
    """Every float in the spec (JSON has no NaN, YAML and Python do; the schema's bounds let
    NaN through, since no comparison with it is true)."""
    if isinstance(value, float):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{where}[{i}]")


def _message(error: jsonschema.ValidationError) -> str:
    """The schema error in words that name the field and the allowed values."""
    where = "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
    value, rule = error.instance, error.schema
    if error.validator in ("minimum", "maximum"):
        low, high = rule.get("minimum", "-inf"), rule.get("maximum", "inf")
        return f"{where}={value!r} is outside [{low}, {high}]"
    if error.validator == "enum":
        return f"{where}={value!r} is not one of {', '.join(map(str, rule['enum']))}"
    if error.validator == "type" and rule.get("type") in ("integer", "number"):
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        problem = "must be a whole number" if is_number else "is not a number"
        return f"{where}={value!r} {problem}"
    if error.validator == "type" and rule.get("type") == "object":
        what = "a label selector" if "matchLabels" in rule.get("properties", {}) else "an object"
        return f"{where} must be {what}, got {value!r}"
    shown = "" if isinstance(value, dict | list) else f"={value!r}"
    return f"{where}{shown}: {error.message}"


def _at(spec: Mapping, path: str) -> Any:
    value: Any = spec
    for part in path.split("."):
        value = value[part]
    return value


def _number(spec: Mapping, path: str, integer: bool = False) -> Any:
    """A number the schema has already checked (type and range)."""
    value = _at(spec, path)
    return int(value) if integer else float(value)


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
    source = _at(spec, "workload.source")
    trace = spec["workload"].get("trace") or {}
    path, trace_format = trace.get("path"), trace.get("format") or "auto"
    if source == "trace" and not path:
        raise InvalidSpec("spec.workload.trace.path is required when spec.workload.source is trace")
    rec = "workload.recording."
    return WorkloadSource(
        source=source,
        trace_path=path,
        trace_format=trace_format,
        min_observed_tasks=_number(spec, "workload.minObservedTasks", integer=True),
        max_tasks=_number(spec, rec + "maxTasks", integer=True),
        max_age_seconds=_number(spec, rec + "maxAgeSeconds", integer=True),
        flush_seconds=_number(spec, rec + "flushSeconds", integer=True),
    )


def parse_spec(raw: Mapping | None) -> PolicySpec:
    """Validate and translate; raises InvalidSpec naming the first bad field."""
    spec = with_defaults(raw)
    check_schema(spec)
    architecture = _at(spec, "architecture")
    strategy = _at(spec, "strategy")
    validation = spec["validation"]
    freeze = _at(spec, "adaptation.freeze")
    max_nodes = _number(spec, "maxNodes", integer=True)
    limit = ARCHITECTURES[architecture].max_slots
    if limit is not None and max_nodes > limit:
        raise InvalidSpec(
            f"spec.maxNodes={max_nodes} exceeds {limit}, the most a {architecture} policy "
            "supports (its input layer has a block per node); use architecture node-set for "
            f"bigger clusters, or maxNodes <= {limit}"
        )
    hidden = _number(spec, "hiddenSize", integer=True)
    w = spec["workload"]
    try:
        workload = WorkloadSpec(
            load=_number(spec, "workload.load"),
            burst_factor=_number(spec, "workload.burstFactor"),
            burst_probability=_number(spec, "workload.burstProbability"),
            burst_length=_number(spec, "workload.burstLength", integer=True),
            episode_tasks=_number(spec, "workload.episodeTasks", integer=True),
            **({"task_classes": c} if (c := _task_classes(w.get("taskClasses"))) else {}),
        )
    except InvalidWorkload as error:
        raise InvalidSpec(f"spec.workload: {error}") from error
    seed = _number(spec, "training.seed", integer=True)
    device = _device(spec)
    storage = spec["storage"]
    backend = _at(spec, "storage.backend")
    path = storage.get("path")
    if backend == "filesystem" and not path:
        raise InvalidSpec("spec.storage.path is required when spec.storage.backend is filesystem")
    if backend == "configmap" and path:
        raise InvalidSpec("spec.storage.path is only allowed with spec.storage.backend filesystem")
    namespaces = spec.get("namespaces")
    return PolicySpec(
        selector=spec.get("nodeSelector"),
        pod_selector=spec.get("podSelector"),
        namespaces=None if namespaces is None else tuple(namespaces),
        max_nodes=max_nodes,
        architecture=architecture,
        training=TrainingSettings(
            architecture=architecture,
            hidden=hidden,
            steps=(
                None
                if spec["training"].get("budgetSteps") is None
                else _number(spec, "training.budgetSteps", integer=True)
            ),
            seed=seed,
            episodes=_number(spec, "validation.episodes", integer=True),
            max_nodes=max_nodes,
            workload=workload,
            device=device,
        ),
        adaptation=AdaptationSettings(
            strategy=strategy,
            budget_steps=_number(spec, "adaptation.budgetSteps", integer=True),
            freeze=freeze,
            episodes=_number(spec, "validation.episodes", integer=True),
            min_retention=_number(spec, "validation.minRetention"),
            rollback=bool(validation["rollback"]["enabled"]),
            on_inconclusive=_at(spec, "validation.onInconclusive"),
            max_nodes=max_nodes,
            seed=seed,
            workload=workload,
            device=device,
        ),
        settle_seconds=_number(spec, "adaptation.settleSeconds"),
        max_attempts=_number(spec, "adaptation.maxAttempts", integer=True),
        backoff_seconds=_number(spec, "adaptation.backoffSeconds"),
        storage_backend=backend,
        storage_path=path,
        keep_versions=_number(spec, "storage.keepVersions", integer=True),
        workload_source=_workload_source(spec),
        serving_mode=_at(spec, "serving.mode"),
        paused=_at(spec, "paused"),
        training_backend=_at(spec, "training.backend"),
        training_job=_training_job(spec["training"].get("job") or {}),
    )


def _device(spec: Mapping) -> str:
    """spec.training.device; `cuda` must exist where training runs: here, unless a Job
    trains (its pod checks at start, and says so in the Job's result)."""
    device = _at(spec, "training.device")
    if spec["training"].get("backend") != "job":
        problem = device_problem(device, "spec.training.device")
        if problem is not None:
            raise InvalidSpec(problem)
    return device


def _training_job(job: Mapping) -> TrainingJob:
    return TrainingJob(
        image=job.get("image") or None,
        service_account=job.get("serviceAccountName") or TrainingJob.service_account,
        deadline_seconds=job.get("deadlineSeconds", TrainingJob.deadline_seconds),
        resources=dict(job.get("resources") or {}),
        node_selector=dict(job.get("nodeSelector") or {}),
        tolerations=tuple(job.get("tolerations") or ()),
    )
