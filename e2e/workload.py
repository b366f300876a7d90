"""A workload generator: pods from a task stream, created when they arrive, gone when done.

The tasks come from any `metapolicy.traces.TaskSource` (the synthetic workload of
`traces.SyntheticTasks`, or a trace file through `traces.TraceTasks`), one episode of it; what
each task declares is read back from its attribute vector (`trace_files.attributes_of`).
Each task becomes a pod that a MetaPolicy places (its `spec.podSelector` labels) and that
opts in to the MetaPolicy scheduler (`schedulerName: metapolicy-scheduler`), carrying what the
task declares, the way a real workload would:

- requests (cpu, memory), and limits that give it its QoS class: Guaranteed (limits equal
  requests), Burstable (a memory limit above the request), BestEffort (no resources at all);
- an ownerReference of the kind its owner group implies (Job, ReplicaSet, StatefulSet; none for
  "other"), so `pods.pod_attributes` reads the same owner group. A real cluster's garbage
  collector deletes pods whose owner does not exist, so pass `owner_references=False` there;
- the `metapolicy.dev/expected-duration` annotation when the task has a duration hint;
- `spec.priority` when non-zero (the emulator only: a real API server computes it from a
  PriorityClass and refuses a pod that sets it).

Time is compressed by `compression` (arrivals and durations divided by it). A task's duration
counts from when its pod is seen bound to a node; then the pod is deleted, or with
`finish="succeed"` first marked `Succeeded` (as a finished Job's pod) and then deleted.
"""

from __future__ import annotations

import contextlib
import heapq
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import kubernetes
import numpy as np

from e2e.cluster import Kube
from e2e.informer import Informer, object_key
from e2e.scheduler import SCHEDULER_NAME
from metapolicy.features import PodAttributes
from metapolicy.trace_files import attributes_of
from metapolicy.traces import TaskBatch, TaskSource
from metapolicy_operator.pods import DURATION_HINT_ANNOTATION

WORKLOAD_LABEL = "e2e.metapolicy.dev/workload"
IMAGE = "registry.k8s.io/pause:3.10"
OWNER_KINDS = {  # owner group -> (apiVersion, kind) of the owner a pod of that group has
    "batch": ("batch/v1", "Job"),
    "service": ("apps/v1", "ReplicaSet"),
    "stateful": ("apps/v1", "StatefulSet"),
}
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Task:
    index: int
    arrival: float  # seconds since the stream's start, uncompressed
    cpu: float  # cores
    memory_mib: float
    duration: float  # seconds, uncompressed: the truth, which only the generator knows
    attributes: PodAttributes


def tasks_from_batch(batch: TaskBatch, episode: int = 0, limit: int | None = None) -> list[Task]:
    count = batch.episode_tasks if limit is None else min(limit, batch.episode_tasks)
    start = float(batch.arrival[episode, 0]) if count else 0.0
    return [
        Task(
            index=i,
            arrival=float(batch.arrival[episode, i]) - start,
            cpu=float(batch.cpu[episode, i]),
            memory_mib=float(batch.memory[episode, i]),
            duration=float(batch.duration[episode, i]),
            attributes=attributes_of(batch.attributes[episode, i]),
        )
        for i in range(count)
    ]


def draw_tasks(
    source: TaskSource,
    seed: int,
    capacity_cpu: float,
    limit: int | None = None,
    largest: tuple[float, float] | None = None,
) -> list[Task]:
    """One episode of `source` for a cluster of `capacity_cpu` cores: the synthetic workload
    (`traces.SyntheticTasks`) or a trace (`traces.TraceTasks(trace_files.read_trace(path))`,
    which scales task sizes to `largest`, the biggest node's (cpu, memory MiB))."""
    return tasks_from_batch(source.draw([seed], capacity_cpu, largest), 0, limit)


def _resources(task: Task) -> dict[str, Any]:
    qos = task.attributes.qos
    if qos == "BestEffort":
        return {}
    requests = {"cpu": f"{round(task.cpu * 1000)}m", "memory": f"{round(task.memory_mib)}Mi"}
    if qos == "Guaranteed":
        limits = dict(requests)
    else:  # Burstable: requests, and room to grow in memory
        limits = {"memory": f"{round(task.memory_mib * 2)}Mi"}
    if task.attributes.gpu > 0:
        limits["nvidia.com/gpu"] = str(int(np.ceil(task.attributes.gpu)))
    return {"requests": requests, "limits": limits}


def pod_manifest(
    task: Task,
    name: str,
    *,
    labels: Mapping[str, str],
    scheduler_name: str = SCHEDULER_NAME,
    node_selector: Mapping[str, str] | None = None,
    owner_references: bool = True,
) -> dict[str, Any]:
    """The pod of one task (see the module's docstring for what it carries and why)."""
    attributes = task.attributes
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if attributes.duration_hint_s is not None:
        hint = f"{attributes.duration_hint_s:g}s"
        metadata["annotations"] = {DURATION_HINT_ANNOTATION: hint}
    if owner_references and attributes.owner in OWNER_KINDS:
        api_version, kind = OWNER_KINDS[attributes.owner]
        owner = f"{name.rsplit('-', 1)[0]}-{kind.lower()}"
        metadata["ownerReferences"] = [
            {
                "apiVersion": api_version,
                "kind": kind,
                "name": owner,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"e2e/{kind}/{owner}")),
                "controller": True,
            }
        ]
    spec: dict[str, Any] = {
        "schedulerName": scheduler_name,
        "restartPolicy": "Never" if attributes.owner == "batch" else "Always",
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "task", "image": IMAGE, "resources": _resources(task)}],
    }
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if attributes.priority:
        spec["priority"] = attributes.priority
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


@dataclass
class WorkloadGenerator:
    """Creates one pod per task at its (compressed) arrival time; `start()`, `wait_done()`,
    `stop()` (which deletes whatever pods are left)."""

    kube: Kube
    tasks: list[Task]
    name: str  # the generator's label value and pod name prefix
    labels: Mapping[str, str] = field(default_factory=dict)  # the policy's podSelector labels
    namespace: str = "default"
    compression: float = 1.0
    finish: Literal["delete", "succeed"] = "delete"
    scheduler_name: str = SCHEDULER_NAME
    node_selector: Mapping[str, str] | None = None
    owner_references: bool = True
    created: dict[str, Task] = field(default_factory=dict)  # pod key -> task
    started: dict[str, float] = field(default_factory=dict)  # pod key -> monotonic, seen bound
    finished: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.compression <= 0:
            raise ValueError("compression must be positive")
        self.pods = Informer(self.kube, "pods", label_selector=f"{WORKLOAD_LABEL}={self.name}")
        self.pods.add_handler(self._pod_event)
        self._events: list[tuple[float, int, str, Any]] = []  # (due, seq, what, payload)
        self._seq = 0
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"workload-{self.name}", daemon=True)

    def start(self) -> WorkloadGenerator:
        self.pods.start()
        self.pods.synced.wait(30)
        self._t0 = time.monotonic()
        with self._lock:
            for task in self.tasks:
                self._push(self._t0 + task.arrival / self.compression, "create", task)
        self._thread.start()
        return self

    def done(self) -> bool:
        """Every task's pod was created and has finished."""
        return len(self.finished) == len(self.tasks)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop creating pods and delete the ones left (once: a second call does nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout)
        for key in set(self.created) - self.finished:
            self._delete(key)
        self.pods.stop()

    # ----- events ----------------------------------------------------------------------------
    def _push(self, due: float, what: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (due, self._seq, what, payload))
        self._lock.notify_all()

    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        key = object_key(pod)
        if kind == "DELETED" or key not in self.created or key in self.started:
            return
        if (pod.get("spec") or {}).get("nodeName"):
            with self._lock:
                now = time.monotonic()
                self.started[key] = now
                self._push(now + self.created[key].duration / self.compression, "finish", key)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                now = time.monotonic()
                if not self._events or self._events[0][0] > now:
                    wait = self._events[0][0] - now if self._events else 1.0
                    self._lock.wait(timeout=min(max(wait, 0.001), 1.0))
                    continue
                _, _, what, payload = heapq.heappop(self._events)
            if what == "create":
                self._create(payload)
            else:
                self._finish(payload)

    def _create(self, task: Task) -> None:
        name = f"{self.name}-{task.index:05d}"
        labels = {**self.labels, WORKLOAD_LABEL: self.name}
        body = pod_manifest(task, name, labels=labels, scheduler_name=self.scheduler_name,
                            node_selector=self.node_selector,
                            owner_references=self.owner_references)  # fmt: skip
        key = f"{self.namespace}/{name}"
        with self._lock:
            self.created[key] = task  # before the create: its events may come first
        try:
            self.kube.core.create_namespaced_pod(self.namespace, body, _preload_content=False)
        except kubernetes.client.ApiException as error:
            self.errors.append(f"create {key}: {error.status} {error.reason}")
            with self._lock:
                self.created.pop(key, None)
                self.finished.add(key)  # counted as done: it will never run

    def _finish(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        if self.finish == "succeed":
            patch = {"status": {"phase": "Succeeded"}}
            with contextlib.suppress(kubernetes.client.ApiException):
                self.kube.core.patch_namespaced_pod_status(
                    name, namespace, patch, _content_type=MERGE_PATCH
                )
        self._delete(key)
        with self._lock:
            self.finished.add(key)

    def _delete(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        try:
            self.kube.core.delete_namespaced_pod(
                name, namespace, grace_period_seconds=0, _preload_content=False
            )
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                self.errors.append(f"delete {key}: {error.status} {error.reason}")
