"""Node objects as an autoscaler (or a person with kubectl) changes them.

Only what the operator reads is written: labels, the latency annotation, allocatable cpu and
memory, the Ready condition, `spec.unschedulable` and removal taints. On a real cluster, fake
nodes have no kubelet, so `Heartbeat` renews their Leases in `kube-node-lease`: otherwise the
node lifecycle controller marks them `Ready=Unknown` after its grace period (40 s by default)
and every scenario would see its nodes vanish.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kubernetes

from e2e.cluster import Kube
from e2e.wait import poll

LATENCY_ANNOTATION = "metapolicy.dev/latency-ms"
#: Every node an e2e run creates carries this label (value: the scenario name), so a policy can
#: select only its scenario's nodes and cleanup never touches anything else.
SCENARIO_LABEL = "e2e.metapolicy.dev/scenario"

#: What each autoscaler puts on a node it is about to remove (see operator inventory.py).
REMOVAL_TAINTS = {
    "cluster-autoscaler": {"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"},
    "karpenter": {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"},  # Karpenter v1
    "karpenter-v0": {  # Karpenter v0.32-v0.37
        "key": "karpenter.sh/disruption",
        "value": "disrupting",
        "effect": "NoSchedule",
    },
}

DELETE_TIMEOUT = 30.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready(status: bool) -> dict[str, Any]:
    now = _now()
    return {
        "type": "Ready",
        "status": "True" if status else "False",
        "reason": "KubeletReady" if status else "KubeletNotReady",
        "message": "e2e autoscaler",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }


def node_body(spec: Mapping[str, Any], scenario: str) -> dict[str, Any]:
    """A Node from a scenario entry `{name, cpu, memory, latencyMs, labels, ready}`."""
    annotations = {}
    if spec.get("latencyMs") is not None:
        annotations[LATENCY_ANNOTATION] = str(spec["latencyMs"])  # malformed on purpose, maybe
    resources = {"cpu": str(spec.get("cpu", "4")), "memory": str(spec.get("memory", "16Gi"))}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec["name"],
            "labels": {**(spec.get("labels") or {}), SCENARIO_LABEL: scenario},
            "annotations": annotations,
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "conditions": [_ready(spec.get("ready", True))],
        },
    }


class Nodes:
    """Node changes for one scenario; remembers what it created, for cleanup."""

    def __init__(self, kube: Kube, scenario: str) -> None:
        self.kube = kube
        self.scenario = scenario
        self.created: set[str] = set()
        self.heartbeat = Heartbeat(kube).start() if kube.real else None

    def add(self, spec: Mapping[str, Any]) -> None:
        body = node_body(spec, self.scenario)
        created = self.kube.core.create_node(body)
        self.created.add(spec["name"])
        if self.heartbeat is not None:
            self.heartbeat.track(spec["name"], created.metadata.uid)
        # A server that drops status on create (it is a subresource) gets it written now.
        if not (created.status and created.status.conditions):
            self.kube.core.patch_node_status(spec["name"], {"status": body["status"]})

    def cordon(self, name: str, unschedulable: bool = True) -> None:
        self.kube.core.patch_node(name, {"spec": {"unschedulable": unschedulable}})

    def taint(self, name: str, kind: str) -> None:
        taint = dict(REMOVAL_TAINTS[kind])
        if kind == "cluster-autoscaler":
            taint["value"] = str(int(datetime.now(UTC).timestamp()))  # what CA writes
        node = self.kube.core.read_node(name)
        # sanitize_for_serialization: the API's camelCase (timeAdded), without unset fields
        current = (node.spec.taints if node.spec else None) or []
        taints = self.kube.api.sanitize_for_serialization(current)
        self.kube.core.patch_node(name, {"spec": {"taints": [*taints, taint]}})

    def set_ready(self, name: str, ready: bool) -> None:
        self.kube.core.patch_node_status(name, {"status": {"conditions": [_ready(ready)]}})

    def set_latency(self, name: str, latency: Any) -> None:
        patch = {"metadata": {"annotations": {LATENCY_ANNOTATION: str(latency)}}}
        self.kube.core.patch_node(name, patch)

    def delete(self, name: str, wait: bool = True) -> None:
        with contextlib.suppress(kubernetes.client.ApiException):
            self.kube.core.delete_node(name)
        if self.heartbeat is not None:
            self.heartbeat.untrack(name)
        if wait:
            poll(lambda: not self.exists(name), DELETE_TIMEOUT, f"node {name} to be deleted")
        self.created.discard(name)

    def exists(self, name: str) -> bool:
        try:
            self.kube.core.read_node(name)
            return True
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return False
            raise

    def cleanup(self) -> None:
        """Delete every node this scenario created (and only those)."""
        for name in sorted(self.created):
            self.delete(name, wait=False)
        for name in sorted(self.created):
            poll(lambda n=name: not self.exists(n), DELETE_TIMEOUT, f"node {name} to be deleted")
        self.created.clear()
        if self.heartbeat is not None:
            self.heartbeat.stop()


class Heartbeat:
    """Renews a Lease per fake node on a real cluster, the way a kubelet does.

    Lease renewals are not Node updates, so they do not wake the operator's settle window.
    Untested here (no real cluster on the development machines); see docs/e2e.md.
    """

    NAMESPACE = "kube-node-lease"
    DURATION = 40

    def __init__(self, kube: Kube, interval: float = 10.0) -> None:
        self.kube = kube
        self.nodes: dict[str, str] = {}  # name -> uid, for the Lease's ownerReference
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def track(self, name: str, uid: str) -> None:
        self.nodes[name] = uid
        with contextlib.suppress(kubernetes.client.ApiException):
            self._renew(name, uid)  # at once: the grace period runs from the node's creation

    def untrack(self, name: str) -> None:
        self.nodes.pop(name, None)  # the Lease goes with its owner, the Node

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, uid in list(self.nodes.items()):
                with contextlib.suppress(kubernetes.client.ApiException):
                    self._renew(name, uid)

    def _renew(self, name: str, uid: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": name, "leaseDurationSeconds": self.DURATION, "renewTime": now}
        api = self.kube.coordination
        try:
            api.patch_namespaced_lease(name, self.NAMESPACE, {"spec": spec})
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}
            metadata = {"name": name, "namespace": self.NAMESPACE, "ownerReferences": [owner]}
            body = {"metadata": metadata, "spec": spec}
            api.create_namespaced_lease(self.NAMESPACE, body)
