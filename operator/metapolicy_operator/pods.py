"""Pods as a scheduler sees them: what they request, what they declare, which policy they
belong to, and whether they hold resources on a node.

Pure functions of plain mappings (what the API returns), shared by the placement server (the
pod being scheduled and the pods bound to each node) and the workload recorder (the observed
trace), so both read a pod the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from metapolicy.features import QOS_CLASSES, PodAttributes, owner_group
from metapolicy_operator.inventory import (
    QuantityError,
    matches_selector,
    parse_cpu,
    parse_memory_mib,
)
from metapolicy_operator.objects import dig

DURATION_HINT_ANNOTATION = "metapolicy.dev/expected-duration"
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")
TERMINAL_PHASES = ("Succeeded", "Failed")

_GO_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s|ms))+$")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class InvalidPod(ValueError):
    """A pod whose requests cannot be read; the message names the pod and the field."""


@dataclass(frozen=True)
class Requests:
    cpu: float = 0.0  # cores
    memory_mib: float = 0.0

    def __add__(self, other: Requests) -> Requests:
        return Requests(self.cpu + other.cpu, self.memory_mib + other.memory_mib)

    def max(self, other: Requests) -> Requests:
        return Requests(max(self.cpu, other.cpu), max(self.memory_mib, other.memory_mib))


def pod_key(pod: Mapping) -> str:
    return f"{dig(pod, 'metadata', 'namespace') or ''}/{dig(pod, 'metadata', 'name') or ''}"


def _container_requests(container: Mapping, where: str) -> Requests:
    requests = dig(container, "resources", "requests") or {}
    try:
        return Requests(
            cpu=parse_cpu(requests.get("cpu", 0)),
            memory_mib=parse_memory_mib(requests.get("memory", 0)),
        )
    except QuantityError as error:
        raise InvalidPod(f"{where}: {error}") from None


def pod_requests(pod: Mapping) -> Requests:
    """cpu and memory the pod takes from a node, by kube-scheduler's accounting
    (NodeResourcesFit, computing `resource.PodRequests` of k8s.io/component-helpers):

    - the sum of the app containers' requests;
    - init containers run one at a time before them, so the pod needs the largest of them,
      plus the restartable (sidecar, `restartPolicy: Always`) init containers started before
      it; sidecars keep running and also add to the app containers' sum;
    - the larger of the two, plus `spec.overhead` (RuntimeClass overhead).

    Pod-level `spec.resources.requests` (PodLevelResources), where set, replace the container
    sum for the resources they name, as upstream does.
    """
    key = pod_key(pod)
    spec = dig(pod, "spec") or {}
    total = Requests()
    for i, c in enumerate(spec.get("containers") or []):
        total = total + _container_requests(c, f"pod {key}: spec.containers[{i}]")
    sidecars, init_peak = Requests(), Requests()
    for i, c in enumerate(spec.get("initContainers") or []):
        request = _container_requests(c, f"pod {key}: spec.initContainers[{i}]")
        if c.get("restartPolicy") == "Always":
            total = total + request
            sidecars = sidecars + request
            init_peak = init_peak.max(sidecars)
        else:
            init_peak = init_peak.max(request + sidecars)
    total = total.max(init_peak)
    pod_level = dig(spec, "resources", "requests") or {}
    if pod_level:
        level = _container_requests({"resources": {"requests": pod_level}}, f"pod {key}: spec")
        total = Requests(
            level.cpu if "cpu" in pod_level else total.cpu,
            level.memory_mib if "memory" in pod_level else total.memory_mib,
        )
    overhead = dig(spec, "overhead") or {}
    if overhead:
        total = total + _container_requests(
            {"resources": {"requests": overhead}}, f"pod {key}: spec.overhead"
        )
    return total


def qos_class(pod: Mapping) -> str:
    """status.qosClass as the API server sets it; computed from the spec when absent."""
    declared = dig(pod, "status", "qosClass")
    if declared in QOS_CLASSES:
        return declared
    containers = list(dig(pod, "spec", "containers") or []) + list(
        dig(pod, "spec", "initContainers") or []
    )
    any_set, guaranteed = False, bool(containers)
    for c in containers:
        requests = dig(c, "resources", "requests") or {}
        limits = dig(c, "resources", "limits") or {}
        if requests or limits:
            any_set = True
        for resource in ("cpu", "memory"):
            limit = limits.get(resource)
            if limit is None or requests.get(resource, limit) != limit:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def parse_duration(value: str) -> float:
    """Seconds from a Go duration ("90s", "5m", "1h30m") or a plain number of seconds."""
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        if not _GO_DURATION.match(text):
            raise ValueError(f"{value!r} is not a duration such as 90s, 5m or 1h30m") from None
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _GO_PART.findall(text))
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{value!r} is not a duration >= 0")
    return seconds


def _gpus(pod: Mapping) -> float:
    total = 0.0
    for c in dig(pod, "spec", "containers") or []:
        resources = dig(c, "resources") or {}
        for name in GPU_RESOURCES:
            raw = (resources.get("limits") or {}).get(name) or (
                resources.get("requests") or {}
            ).get(name)
            if raw is not None:
                try:
                    total += parse_cpu(raw)
                except QuantityError:
                    continue
    return total


def pod_attributes(pod: Mapping) -> tuple[PodAttributes, str | None]:
    """What the pod declares, and a problem with its duration hint (ignored then), if any."""
    owners = dig(pod, "metadata", "ownerReferences") or []
    controller = next((o for o in owners if isinstance(o, Mapping) and o.get("controller")), None)
    owner = controller or (owners[0] if owners and isinstance(owners[0], Mapping) else None)
    priority = dig(pod, "spec", "priority")
    hint, problem = None, None
    raw = (dig(pod, "metadata", "annotations") or {}).get(DURATION_HINT_ANNOTATION)
    if raw is not None:
        try:
            hint = parse_duration(raw)
        except ValueError as error:
            problem = f"pod {pod_key(pod)}: annotation {DURATION_HINT_ANNOTATION}: {error}"
    attributes = PodAttributes(
        qos=qos_class(pod),
        gpu=_gpus(pod),
        priority=priority if isinstance(priority, int) else 0,
        owner=owner_group(owner.get("kind") if owner else None),
        duration_hint_s=hint,
    )
    return attributes, problem


def parse_time(value: str | None) -> float | None:
    """An RFC 3339 timestamp (metav1.Time) as Unix seconds."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def holds_resources(pod: Mapping) -> bool:
    """Bound to a node and not finished: what the scheduler counts on that node. A pod being
    deleted still runs until its containers stop, so it still counts."""
    return bool(dig(pod, "spec", "nodeName")) and (
        dig(pod, "status", "phase") not in TERMINAL_PHASES
    )


def policy_matches(pod: Mapping, pod_selector: Mapping | None, namespaces: Iterable[str]) -> bool:
    """Whether a MetaPolicy places this pod: its namespace is one of `namespaces` (the spec's
    `namespaces`, or the policy's own namespace when that is absent) and its labels match
    `spec.podSelector`. Without a podSelector a policy places no pod, so that creating a
    MetaPolicy never captures pods by accident; `{}` selects every pod of those namespaces."""
    if pod_selector is None:
        return False
    if dig(pod, "metadata", "namespace") not in set(namespaces):
        return False
    return matches_selector(dig(pod, "metadata", "labels") or {}, pod_selector)
