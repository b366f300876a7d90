"""The policy's observation for one pod, built from the cache by the model library's own
feature builder (`features.observe`), exactly as the simulator builds it in `scheduler_view()`:
the pod is the task, the cache is the node state.

The nodes are the policy's eligible nodes the cache knows: the active version's slot nodes
(so the pooled context is the one it was trained with) followed by the candidate nodes it has
no slot for; all of them are `available`. The decision is then taken among the candidates only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metapolicy import features
from metapolicy_operator.inventory import matches_selector
from metapolicy_operator.pods import InvalidPod, parse_time, pod_attributes, pod_requests
from metapolicy_operator.serving.arrivals import ArrivalLog
from metapolicy_operator.serving.cache import MIB, ClusterCache, NodeInfo, to_bytes, to_millicores

_NO_PODS = (np.zeros(0), np.zeros(0), np.zeros(0, np.int64))


class UnreadableNode(LookupError):
    """A candidate node the server has no usable data for: not in its cache nor in the
    request, or its allocatable resources cannot be read."""


@dataclass(frozen=True)
class PodRequest:
    """The pod being placed, in kube-scheduler's units."""

    millicores: int
    bytes: int
    attributes: np.ndarray  # PodAttributes.vector()
    created: float | None
    uid: str


def read_pod(pod: Mapping[str, Any]) -> PodRequest:
    """Raises InvalidPod when the requests or the declared attributes cannot be read."""
    requests = pod_requests(pod)
    try:
        attributes, _ = pod_attributes(pod)
        created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    except (ValueError, TypeError) as error:
        raise InvalidPod(f"pod {pod.get('metadata', {}).get('name')!r}: {error}") from None
    meta = pod.get("metadata") or {}
    return PodRequest(
        millicores=to_millicores(requests.cpu),
        bytes=to_bytes(requests.memory_mib),
        attributes=attributes.vector(),
        created=created,
        uid=str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"),
    )


@dataclass(frozen=True)
class Snapshot:
    """Everything one decision reads, taken on the event loop; the evaluation (on the compute
    thread) touches nothing else."""

    names: list[str]  # the observation's nodes
    state: features.ClusterState
    pods: features.PendingPods
    candidates: np.ndarray  # per candidate, its index in `names`; -1: not one of the policy's


def policy_nodes(
    cache: ClusterCache,
    selector: Mapping | None,
    slot_names: Sequence[str],
    candidates: Sequence[str],
    request_nodes: Mapping[str, NodeInfo] | None = None,
) -> tuple[list[NodeInfo], np.ndarray]:
    """(the observation's nodes, each candidate's index among them or -1).

    Raises UnreadableNode for a candidate without usable data."""
    known = request_nodes or {}
    infos: list[NodeInfo] = []
    index: dict[str, int] = {}

    def take(info: NodeInfo | None) -> None:
        if info is None or info.name in index or not info.usable:
            return
        if not matches_selector(info.labels, selector):
            return
        index[info.name] = len(infos)
        infos.append(info)

    for name in slot_names:
        take(known.get(name) or cache.nodes.get(name))
    positions = []
    for name in candidates:
        info = known.get(name) or cache.nodes.get(name)
        if info is None:
            raise UnreadableNode(f"node {name!r} is not in the server's cache")
        if info.profile is None:
            raise UnreadableNode(f"node {name!r}: allocatable cpu or memory unreadable")
        take(info)
        positions.append(index.get(name, -1))
    return infos, np.array(positions, np.int64)


def cluster_state(cache: ClusterCache, infos: Sequence[NodeInfo]) -> features.ClusterState:
    """The nodes as `features.ClusterState` (one state, B = 1), pods from the cache."""
    size = len(infos)
    used = np.array([cache.requested(info.name) for info in infos], np.int64).reshape(size, 3)
    pods = [cache.usage[i.name].arrays() if i.name in cache.usage else _NO_PODS for i in infos]
    counts = np.array([len(p[0]) for p in pods], np.int64)
    return features.ClusterState(
        cpu=np.array([info.profile.cpu for info in infos], float),
        memory=np.array([info.profile.memory_mib for info in infos], float),
        latency=np.array([info.profile.latency_ms for info in infos], float),
        available=np.ones(size, bool),
        requested_cpu=(used[:, 0] / 1000)[None],
        requested_memory=(used[:, 1] / MIB)[None],
        has_room=(used[:, 2] < np.array([info.max_pods for info in infos]))[None],
        pod_node=np.repeat(np.arange(size), counts),
        pod_cpu=np.concatenate([p[0] for p in pods]) if pods else np.zeros(0),
        pod_start=np.concatenate([p[1] for p in pods]) if pods else np.zeros(0),
        pod_qos=np.concatenate([p[2] for p in pods]) if pods else np.zeros(0, np.int64),
    )


def pending_pods(pod: PodRequest, now: float, arrivals: ArrivalLog) -> features.PendingPods:
    created = pod.created if pod.created is not None else now
    return features.PendingPods(
        cpu=np.array([pod.millicores / 1000]),
        memory=np.array([pod.bytes / MIB]),
        attributes=pod.attributes[None],
        now=np.array([now]),
        recent_arrivals=arrivals.window(created, pod.uid)[None],
    )


def snapshot(
    cache: ClusterCache,
    selector: Mapping | None,
    slot_names: Sequence[str],
    pod: PodRequest,
    candidates: Sequence[str],
    arrivals: ArrivalLog,
    now: float,
    request_nodes: Mapping[str, NodeInfo] | None = None,
) -> Snapshot:
    infos, positions = policy_nodes(cache, selector, slot_names, candidates, request_nodes)
    return Snapshot(
        names=[info.name for info in infos],
        state=cluster_state(cache, infos),
        pods=pending_pods(pod, now, arrivals),
        candidates=positions,
    )


def observe(snap: Snapshot) -> features.Observation:
    return features.observe(snap.state, snap.pods)
