"""The policy's observation for one pod, built from the cache by the model library's own
feature builder (`features.observe`), exactly as the simulator builds it in `scheduler_view()`:
the pod is the task, the cache is the node state.

The nodes are the policy's eligible nodes the cache knows: the active version's slot nodes
(so the pooled context is the one it was trained with) followed by the candidate nodes it has
no slot for; all of them are `available`. The decision is then taken among the candidates only.
"""

from __future__ import annotations

import json
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
        _check(name, info)
        take(info)
        positions.append(index.get(name, -1))
    return infos, np.array(positions, np.int64)


def _static(infos: Sequence[NodeInfo]) -> np.ndarray:
    """(N, 4): allocatable cpu, memory, latency, max pods: what only node events change."""
    return np.array(
        [(i.profile.cpu, i.profile.memory_mib, i.profile.latency_ms, i.max_pods) for i in infos],
        float,
    ).reshape(len(infos), 4)


def cluster_state(
    cache: ClusterCache, infos: Sequence[NodeInfo], static: np.ndarray | None = None
) -> features.ClusterState:
    """The nodes as `features.ClusterState` (one state, B = 1), pods from the cache; `static`:
    `_static(infos)`, if already known."""
    size = len(infos)
    static = _static(infos) if static is None else static
    usage = [cache.usage.get(info.name) for info in infos]
    used = np.array(
        [(u.millicores, u.bytes, len(u.pods)) if u else (0, 0, 0) for u in usage], np.int64
    ).reshape(size, 3)
    pods = [u.arrays() if u else _NO_PODS for u in usage]
    return features.ClusterState(
        cpu=static[:, 0],
        memory=static[:, 1],
        latency=static[:, 2],
        available=np.ones(size, bool),
        requested_cpu=(used[:, 0] / 1000)[None],
        requested_memory=(used[:, 1] / MIB)[None],
        has_room=(used[:, 2] < static[:, 3])[None],
        pod_node=np.repeat(np.arange(size), used[:, 2]),
        pod_cpu=np.concatenate([p[0] for p in pods]) if pods else np.zeros(0),
        pod_start=np.concatenate([p[1] for p in pods]) if pods else np.zeros(0),
        pod_qos=np.concatenate([p[2] for p in pods]) if pods else np.zeros(0, np.int64),
    )


class PolicyView:
    """A policy's eligible slot nodes as the cache knows them, and which other nodes are
    eligible: what every request of the policy needs and only node events change. Kept in the
    cache's `views` until the next node event, so a request only looks at its candidates."""

    def __init__(self, cache: ClusterCache, selector: Mapping | None, slots: Sequence[str]):
        self.selector = selector
        self.infos: list[NodeInfo] = []
        self.index: dict[str, int] = {}
        self._eligible: dict[str, bool] = {}
        for name in slots:
            info = cache.nodes.get(name)
            if info is not None and name not in self.index and self.eligible(info):
                self.index[name] = len(self.infos)
                self.infos.append(info)
        self.static = _static(self.infos)

    def eligible(self, info: NodeInfo) -> bool:
        known = self._eligible.get(info.name)
        if known is None:
            known = self._eligible[info.name] = info.usable and matches_selector(
                info.labels, self.selector
            )
        return known

    def with_candidates(
        self, cache: ClusterCache, candidates: Sequence[str]
    ) -> tuple[list[NodeInfo], np.ndarray, np.ndarray]:
        """(the observation's nodes, each candidate's index among them or -1, `_static`)."""
        nodes = cache.nodes
        infos, index, extra = self.infos, self.index, []
        positions = np.empty(len(candidates), np.int64)
        for k, name in enumerate(candidates):
            at = index.get(name)
            if at is None:
                info = nodes.get(name)
                _check(name, info)
                if self.eligible(info):
                    if not extra:
                        infos, index = list(infos), dict(index)
                    at = index[name] = len(infos)
                    infos.append(info)
                    extra.append(info)
                else:
                    at = -1
            positions[k] = at
        static = np.concatenate([self.static, _static(extra)]) if extra else self.static
        return infos, positions, static


def policy_view(
    cache: ClusterCache, selector: Mapping | None, slot_names: Sequence[str]
) -> PolicyView:
    key = (json.dumps(selector, sort_keys=True), tuple(slot_names))
    view = cache.views.get(key)
    if view is None:
        if len(cache.views) >= 64:  # bounded: a few policies and versions at a time
            cache.views.clear()
        view = cache.views[key] = PolicyView(cache, selector, slot_names)
    return view


def _check(name: str, info: NodeInfo | None) -> None:
    if info is None:
        raise UnreadableNode(f"node {name!r} is not in the server's cache")
    if info.profile is None:
        raise UnreadableNode(f"node {name!r}: allocatable cpu or memory unreadable")


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
    """Raises UnreadableNode for a candidate without usable data."""
    if request_nodes is None:
        view = policy_view(cache, selector, slot_names)
        infos, positions, static = view.with_candidates(cache, candidates)
    else:  # full Node objects in the request: they, not the cache, say what the nodes are
        infos, positions = policy_nodes(cache, selector, slot_names, candidates, request_nodes)
        static = None
    return Snapshot(
        names=[info.name for info in infos],
        state=cluster_state(cache, infos, static),
        pods=pending_pods(pod, now, arrivals),
        candidates=positions,
    )


def observe(snap: Snapshot) -> features.Observation:
    return features.observe(snap.state, snap.pods)
