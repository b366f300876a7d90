"""kube-scheduler's own filter and score for a plain pod, as pure functions of API objects.

What the default profile does for pods like the workload generator's (requests, tolerations,
no affinity, no volumes, no topology constraints), so the scheduler driver can stand in for it:

- eligibility: TaintToleration's and NodeUnschedulable's filters. The node lifecycle
  controller taints a node that is not Ready (`node.kubernetes.io/not-ready`, or
  `unreachable` when Unknown) and kube-scheduler filters on those taints; the emulator has no
  such controller, so the taint is derived here from the Ready condition;
- fit: NodeResourcesFit's filter (the pod's requests plus those of the pods bound to the node,
  `pods.pod_requests`, within allocatable cpu, memory and pod count);
- score: NodeResourcesFit (LeastAllocated) + NodeResourcesBalancedAllocation with their
  default weights, `baselines.kube_default_scores`, 0..200. The default profile's other score
  plugins give every node the same score for such pods, so they cannot change the choice.
  (For scoring, kube-scheduler counts a container without requests as 100m cpu and 200 MB;
  the generator's pods all carry requests, so that default is not modelled.)
- selectHost: the highest total, ties broken uniformly at random.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from metapolicy.baselines import kube_default_scores
from metapolicy_operator.inventory import QuantityError, parse_cpu, parse_quantity
from metapolicy_operator.objects import dig
from metapolicy_operator.pods import Requests, holds_resources, pod_requests

NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
FILTERING_EFFECTS = ("NoSchedule", "NoExecute")  # PreferNoSchedule only lowers a score


def node_name(node: Mapping[str, Any]) -> str:
    return dig(node, "metadata", "name") or ""


def node_taints(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The node's taints, plus those the node lifecycle controller and NodeUnschedulable add."""
    taints = [dict(t) for t in dig(node, "spec", "taints") or [] if isinstance(t, Mapping)]
    conditions = dig(node, "status", "conditions") or []
    ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), "Unknown")
    if ready == "False":
        taints.append({"key": NOT_READY, "effect": "NoSchedule"})
    elif ready != "True":
        taints.append({"key": UNREACHABLE, "effect": "NoSchedule"})
    if dig(node, "spec", "unschedulable"):
        taints.append({"key": UNSCHEDULABLE, "effect": "NoSchedule"})
    return taints


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """v1.Toleration.ToleratesTaint (k8s.io/api/core/v1/toleration.go)."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    return operator == "Equal" and (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated_taint(pod: Mapping[str, Any], node: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first NoSchedule/NoExecute taint of the node that the pod does not tolerate."""
    tolerations = [t for t in dig(pod, "spec", "tolerations") or [] if isinstance(t, Mapping)]
    for taint in node_taints(node):
        if taint.get("effect") not in FILTERING_EFFECTS:
            continue
        if not any(tolerates(t, taint) for t in tolerations):
            return taint
    return None


@dataclass(frozen=True)
class Allocatable:
    cpu_milli: float
    memory_bytes: float
    pods: int | None  # None: not reported (the emulator's nodes), no pod-count limit


def allocatable(node: Mapping[str, Any]) -> Allocatable:
    raw = dig(node, "status", "allocatable") or {}
    try:
        pods = raw.get("pods")
        return Allocatable(
            cpu_milli=round(parse_cpu(raw.get("cpu", 0)) * 1000),
            memory_bytes=round(parse_quantity(raw.get("memory", 0))),
            pods=int(parse_quantity(pods)) if pods is not None else None,
        )
    except QuantityError:
        return Allocatable(0, 0, 0)


@dataclass(frozen=True)
class Usage:
    """What the pods bound to a node request (the scheduler cache's NodeInfo.Requested)."""

    cpu_milli: float = 0.0
    memory_bytes: float = 0.0
    pods: int = 0

    def plus(self, requests: Requests) -> Usage:
        return Usage(
            self.cpu_milli + round(requests.cpu * 1000),
            self.memory_bytes + round(requests.memory_mib * 2**20),
            self.pods + 1,
        )


def usage_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, Usage]:
    """Requests of the bound, unfinished pods, per node (unreadable pods count as empty)."""
    usage: dict[str, Usage] = {}
    for pod in pods:
        if not holds_resources(pod):
            continue
        node = pod["spec"]["nodeName"]
        try:
            requests = pod_requests(pod)
        except ValueError:
            requests = Requests()
        usage[node] = usage.get(node, Usage()).plus(requests)
    return usage


def misfit(requests: Requests, room: Allocatable, used: Usage) -> str | None:
    """NodeResourcesFit's filter: the reason the pod does not fit, or None."""
    if room.pods is not None and used.pods + 1 > room.pods:
        return "Too many pods"
    after = used.plus(requests)
    if after.cpu_milli > room.cpu_milli and requests.cpu > 0:
        return "Insufficient cpu"
    if after.memory_bytes > room.memory_bytes and requests.memory_mib > 0:
        return "Insufficient memory"
    return None


def default_scores(
    requests: Requests, rooms: Mapping[str, Allocatable], used: Mapping[str, Usage]
) -> dict[str, float]:
    """The default profile's resource scores (0..200) of each node, the pod placed on it."""
    names = list(rooms)
    if not names:
        return {}
    after = [used.get(n, Usage()).plus(requests) for n in names]
    requested = (
        np.array([a.cpu_milli for a in after], float),
        np.array([a.memory_bytes for a in after], float),
    )
    alloc = (
        np.array([max(rooms[n].cpu_milli, 1) for n in names], float),
        np.array([max(rooms[n].memory_bytes, 1) for n in names], float),
    )
    return dict(zip(names, kube_default_scores(requested, alloc).tolist(), strict=True))


def select_host(totals: Mapping[str, float], rng: random.Random) -> str:
    """selectHost: the highest score; among equals, each is chosen with equal probability."""
    if not totals:
        raise ValueError("no node to select from")
    best = max(totals.values())
    return rng.choice(sorted(n for n, s in totals.items() if s == best))
