"""Nodes and pods as kube-scheduler sees them: what each node offers and what the pods bound
to it request.

Fed by list + watch (`informer.py`) and read by every scheduling request, always on the event
loop's thread, so there are no locks. Only a compact record of each object is kept, never the
object itself. Requests are summed per node in integer millicores and bytes, NodeResourcesFit's
own units, so adding and removing a pod a million times leaves exactly zero (no float drift).

Events can arrive twice, late or out of order (a relist replays what a watch already said, a
reconnect repeats the last events): an event older than the stored object (by resourceVersion)
is ignored, and a deleted pod's uid is remembered for a while so a late event cannot bring it
back. A name can hold one live pod at a time, so a newer incarnation replaces an older one.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from metapolicy.cluster import NodeProfile
from metapolicy.features import QOS_CLASSES
from metapolicy_operator.inventory import eligibility, node_profile
from metapolicy_operator.objects import dig
from metapolicy_operator.pods import (
    InvalidPod,
    holds_resources,
    parse_time,
    pod_key,
    pod_requests,
    qos_class,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_PODS = 110  # kubelet's --max-pods default, when status.allocatable.pods is absent
TOMBSTONES = 65_536  # deleted pod uids remembered against late events
MIB = 2**20


def to_millicores(cores: float) -> int:
    """Cores as kube-scheduler counts them (Quantity.MilliValue rounds up)."""
    return math.ceil(round(cores * 1000, 6))


def to_bytes(mib: float) -> int:
    return math.ceil(round(mib * MIB, 3))


def _resource_version(obj: Mapping) -> int | None:
    """resourceVersions are opaque strings, in practice etcd revisions: compared as integers
    where they are integers, else every event is taken in arrival order."""
    try:
        return int(dig(obj, "metadata", "resourceVersion"))
    except (TypeError, ValueError):
        return None


def _time(value: Any) -> float | None:
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


@dataclass(frozen=True)
class NodeInfo:
    name: str
    profile: NodeProfile | None  # None: allocatable cpu or memory unreadable
    eligible: bool  # Ready, not cordoned, not being deleted or drained (inventory.eligibility)
    labels: Mapping[str, str]
    max_pods: int
    version: int | None = None

    @property
    def usable(self) -> bool:
        return self.profile is not None and self.eligible

    @property
    def allocatable_millicores(self) -> int:
        return to_millicores(self.profile.cpu) if self.profile else 0

    @property
    def allocatable_bytes(self) -> int:
        return to_bytes(self.profile.memory_mib) if self.profile else 0


def node_info(obj: Mapping[str, Any]) -> NodeInfo:
    """Never raises: a node with unreadable data is kept, with `profile` None."""
    name = str(dig(obj, "metadata", "name") or "")
    eligible, _ = eligibility(obj)
    profile, _ = node_profile(obj) if name else (None, [])
    labels = dig(obj, "metadata", "labels")
    try:
        max_pods = int(dig(obj, "status", "allocatable", "pods") or DEFAULT_MAX_PODS)
    except (TypeError, ValueError):
        max_pods = DEFAULT_MAX_PODS
    return NodeInfo(
        name=name,
        profile=profile,
        eligible=eligible,
        labels=labels if isinstance(labels, Mapping) else {},
        max_pods=max_pods,
        version=_resource_version(obj),
    )


@dataclass(frozen=True)
class PodInfo:
    key: str  # namespace/name
    uid: str
    namespace: str
    labels: Mapping[str, str]
    version: int | None
    node: str | None  # spec.nodeName: bound
    holds: bool  # bound and not finished: counted on its node
    millicores: int
    bytes: int
    start: float  # status.startTime, else metadata.creationTimestamp (seconds)
    qos: int  # index into QOS_CLASSES
    created: float | None


def pod_info(obj: Mapping[str, Any]) -> PodInfo:
    """The compact record; a pod whose requests cannot be read counts as requesting nothing
    (the API server validates quantities, so only a hand-made object gets here)."""
    try:
        requests = pod_requests(obj)
        millicores, nbytes = to_millicores(requests.cpu), to_bytes(requests.memory_mib)
    except InvalidPod as error:
        log.warning("%s; counted as requesting nothing", error)
        millicores, nbytes = 0, 0
    key = pod_key(obj)
    created = _time(dig(obj, "metadata", "creationTimestamp"))
    start = _time(dig(obj, "status", "startTime"))
    labels = dig(obj, "metadata", "labels")
    return PodInfo(
        key=key,
        uid=str(dig(obj, "metadata", "uid") or key),
        namespace=str(dig(obj, "metadata", "namespace") or ""),
        labels=labels if isinstance(labels, Mapping) else {},
        version=_resource_version(obj),
        node=dig(obj, "spec", "nodeName") or None,
        holds=holds_resources(obj),
        millicores=millicores,
        bytes=nbytes,
        start=start if start is not None else (created if created is not None else 0.0),
        qos=QOS_CLASSES.index(qos_class(obj)),
        created=created,
    )


class NodeUsage:
    """The pods holding resources on one node, and their sums."""

    __slots__ = ("_arrays", "bytes", "millicores", "pods")

    def __init__(self) -> None:
        self.pods: dict[str, PodInfo] = {}
        self.millicores = 0
        self.bytes = 0
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, pod: PodInfo) -> None:
        self.pods[pod.key] = pod
        self.millicores += pod.millicores
        self.bytes += pod.bytes
        self._arrays = None

    def remove(self, key: str) -> None:
        pod = self.pods.pop(key)
        self.millicores -= pod.millicores
        self.bytes -= pod.bytes
        self._arrays = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cpu cores, start seconds, qos index) per pod: the feature builder's pod inputs,
        rebuilt only after a change."""
        if self._arrays is None:
            pods = list(self.pods.values())
            self._arrays = (
                np.array([p.millicores / 1000 for p in pods], float),
                np.array([p.start for p in pods], float),
                np.array([p.qos for p in pods], np.int64),
            )
        return self._arrays


Listener = Callable[[PodInfo], None]


class ClusterCache:
    def __init__(self, tombstones: int = TOMBSTONES) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.pods: dict[str, PodInfo] = {}
        self.usage: dict[str, NodeUsage] = {}
        self.node_generation = 0  # bumped on every node change
        self.views: dict[Any, Any] = {}  # per-policy memos (observation.PolicyView), per node set
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._tombstone_limit = tombstones
        self.pod_seen: list[Listener] = []  # a pod (uid) seen for the first time
        self.pod_bound: list[Listener] = []  # a pod seen bound to a node for the first time

    # ----- nodes ----------------------------------------------------------------------------
    def apply_node(self, kind: str, node: NodeInfo) -> None:
        """A watch event (ADDED, MODIFIED, DELETED) of a node, as `node_info` read it."""
        if not node.name:
            return
        current = self.nodes.get(node.name)
        if current is not None and _stale(current.version, node.version):
            return
        if kind == "DELETED":
            self.nodes.pop(node.name, None)
        else:
            self.nodes[node.name] = node
            if current is not None and replace(current, version=node.version) == node:
                return  # a status update that changes nothing a policy reads
        self._nodes_changed()

    def replace_nodes(self, nodes: Iterable[NodeInfo]) -> None:
        """A fresh list: the whole truth about nodes."""
        self.nodes = {node.name: node for node in nodes if node.name}
        self._nodes_changed()

    def _nodes_changed(self) -> None:
        self.node_generation += 1
        self.views.clear()

    # ----- pods -----------------------------------------------------------------------------
    def apply_pod(self, kind: str, pod: PodInfo) -> None:
        """A watch event (ADDED, MODIFIED, DELETED) of a pod, as `pod_info` read it."""
        if pod.uid in self._tombstones:
            return  # a deleted pod never comes back; this event is late
        current = self.pods.get(pod.key)
        if current is not None and _stale(current.version, pod.version):
            if kind == "DELETED" and current.uid != pod.uid:
                self._bury(pod.uid)  # an older incarnation's late deletion
            return
        if kind == "DELETED":
            if current is not None:
                self._remove(current)
                self._bury(current.uid)
            self._bury(pod.uid)
            return
        self._store(pod, current)

    def replace_pods(self, pods: Iterable[PodInfo]) -> None:
        """A fresh list: pods not in it are gone, the others are as listed."""
        listed = {pod.key: pod for pod in pods}
        for gone in [pod for key, pod in self.pods.items() if key not in listed]:
            self._remove(gone)
            self._bury(gone.uid)
        for pod in listed.values():
            self._tombstones.pop(pod.uid, None)
            self._store(pod, self.pods.get(pod.key))

    def _store(self, pod: PodInfo, current: PodInfo | None) -> None:
        if current is not None:
            self._unhold(current)
            if current.uid != pod.uid:
                self._bury(current.uid)  # a name holds one live pod: the old one is gone
        self.pods[pod.key] = pod
        if pod.holds and pod.node:
            self.usage.setdefault(pod.node, NodeUsage()).add(pod)
        new = current is None or current.uid != pod.uid
        if new:
            for listener in self.pod_seen:
                listener(pod)
        if pod.node and (new or not current.node):
            for listener in self.pod_bound:
                listener(pod)

    def _remove(self, pod: PodInfo) -> None:
        self._unhold(pod)
        self.pods.pop(pod.key, None)

    def _unhold(self, pod: PodInfo) -> None:
        usage = self.usage.get(pod.node) if pod.node else None
        if usage is not None and pod.key in usage.pods:
            usage.remove(pod.key)
            if not usage.pods:
                del self.usage[pod.node]

    def _bury(self, uid: str | None) -> None:
        if not uid:
            return
        self._tombstones[uid] = None
        self._tombstones.move_to_end(uid)
        while len(self._tombstones) > self._tombstone_limit:
            self._tombstones.popitem(last=False)

    # ----- reading --------------------------------------------------------------------------
    def requested(self, node: str) -> tuple[int, int, int]:
        """(millicores, bytes, pods) held on the node."""
        usage = self.usage.get(node)
        return (usage.millicores, usage.bytes, len(usage.pods)) if usage else (0, 0, 0)

    def totals(self) -> dict[str, tuple[int, int, int]]:
        """Every node's incrementally kept (millicores, bytes, pods)."""
        return {name: self.requested(name) for name in self.usage}

    def recount(self) -> dict[str, tuple[int, int, int]]:
        """The same, counted from scratch over the stored pods (what `totals` must equal)."""
        counts: dict[str, list[int]] = {}
        for pod in self.pods.values():
            if pod.holds and pod.node:
                c = counts.setdefault(pod.node, [0, 0, 0])
                c[0] += pod.millicores
                c[1] += pod.bytes
                c[2] += 1
        return {name: (c[0], c[1], c[2]) for name, c in counts.items()}


def _stale(stored: int | None, incoming: int | None) -> bool:
    return stored is not None and incoming is not None and incoming <= stored
