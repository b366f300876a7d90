"""Fixtures for the placement server: Node and Pod objects as the API serves them, and a
server harness (cache, policies on a filesystem store, HTTP app) without a cluster.

Nothing sleeps for a fixed time: waits poll a condition with a bound (`wait_for`).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from metapolicy.checkpoint import policy_to_checkpoint
from metapolicy.cluster import NodeProfile
from metapolicy.policy import SlotPolicy, make_policy
from metapolicy.record import AdaptationRecord, Outcome
from metapolicy.store import FilesystemStore
from metapolicy_operator.serving.cache import ClusterCache, node_info, pod_info
from metapolicy_operator.serving.metrics import ServeMetrics
from metapolicy_operator.serving.placer import Placer
from metapolicy_operator.serving.policies import PolicyRegistry
from metapolicy_operator.serving.server import PlacementServer
from metapolicy_operator.serving.shadow import ShadowLog

TIMEOUT = 10.0
PLACED = {"app": "placed"}
_uids = itertools.count(1)


def made_by_operator(outcome: Outcome = Outcome.PROMOTED) -> AdaptationRecord:
    """The record the operator stores with every version (the server refuses one without)."""
    return AdaptationRecord(outcome=outcome, reason="test", trigger="initial")


async def wait_for(predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    """Poll `predicate` (sync or async) until truthy; fail the test after `timeout`."""
    last = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                last = await value if inspect.isawaitable(value) else value
                if last:
                    return last
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not true within {timeout}s: {what}; last: {last!r}") from None


def rfc3339(seconds: float, fraction: bool = False) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    text = moment.isoformat(timespec="microseconds" if fraction else "seconds")
    return text.replace("+00:00", "Z")


def node_object(
    name: str,
    cpu: float | str = 4,
    memory_mib: float = 8192,
    latency_ms: float | None = None,
    labels: Mapping[str, str] | None = None,
    ready: bool = True,
    max_pods: int = 110,
    version: int = 1,
) -> dict[str, Any]:
    annotations = {} if latency_ms is None else {"metapolicy.dev/latency-ms": str(latency_ms)}
    allocatable = {"cpu": str(cpu), "memory": f"{memory_mib}Mi", "pods": str(max_pods)}
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": f"node-{name}",
            "resourceVersion": str(version),
            "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            "annotations": annotations,
        },
        "spec": {},
        "status": {
            "capacity": dict(allocatable),
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod_object(
    name: str,
    cpu: str = "500m",
    memory: str = "512Mi",
    node: str | None = None,
    phase: str = "Pending",
    namespace: str = "default",
    labels: Mapping[str, str] | None = PLACED,
    uid: str | None = None,
    version: int = 1,
    created: float = 1_700_000_000.0,
    started: float | None = None,
    qos: str | None = None,
    owner_kind: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A v1.Pod as the API server (and kube-scheduler's extender call) serializes it."""
    resources = {"requests": {"cpu": cpu, "memory": memory}}
    if qos == "Guaranteed":
        resources["limits"] = dict(resources["requests"])
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid or f"uid-{next(_uids)}",
        "resourceVersion": str(version),
        "creationTimestamp": rfc3339(created, fraction=True),
        "labels": dict(labels or {}),
        "annotations": dict(annotations or {}),
    }
    if owner_kind:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": owner_kind,
                "name": "owner",
                "uid": "o",
                "controller": True,
            }
        ]
    status: dict[str, Any] = {"phase": phase}
    if qos:
        status["qosClass"] = qos
    if started is not None:
        status["startTime"] = rfc3339(started, fraction=True)
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "busybox", "resources": resources}],
        "schedulerName": "metapolicy-scheduler",
        "restartPolicy": "Never",
        "priority": 0,
    }
    if node:
        spec["nodeName"] = node
    return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": spec, "status": status}


def metapolicy_object(
    name: str,
    store_root: Path,
    namespace: str = "default",
    pod_selector: Mapping | None = None,
    mode: str = "active",
    node_selector: Mapping | None = None,
    namespaces: Sequence[str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": dict(PLACED)} if pod_selector is None else pod_selector,
        "storage": {"backend": "filesystem", "path": str(store_root)},
        "serving": {"mode": mode},
    }
    if node_selector is not None:
        spec["nodeSelector"] = node_selector
    if namespaces is not None:
        spec["namespaces"] = list(namespaces)
    return {
        "apiVersion": "metapolicy.dev/v1alpha1",
        "kind": "MetaPolicy",
        "metadata": {"name": name, "namespace": namespace, "uid": f"mp-{name}"},
        "spec": spec,
    }


def profiles(nodes: Sequence[Mapping]) -> list[NodeProfile]:
    return [node_info(n).profile for n in nodes]


class Harness:
    """The server's parts wired as `metapolicy serve` wires them, fed by hand instead of by
    informers; MetaPolicies use the filesystem backend under `root`."""

    def __init__(self, root: Path, budget_s: float = 5.0) -> None:
        self.root = root
        self.metrics = ServeMetrics()
        self.cache = ClusterCache()
        self.registry = PolicyRegistry(self.cache, self.metrics, core=None, poll_seconds=0.01)
        self.shadow = ShadowLog(self.metrics)
        self.cache.pod_bound.append(self.shadow.bound)
        self.compute = ThreadPoolExecutor(1)
        self.placer = Placer(
            self.cache, self.registry, self.shadow, self.metrics, self.compute, budget_s
        )
        self.server = PlacementServer(self.placer, self.metrics, lambda: (True, "ready"))
        self.client: TestClient | None = None

    async def start(self) -> Harness:
        self.registry.start()
        self.client = TestClient(TestServer(self.server.app()))
        await self.client.start_server()
        return self

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        await self.registry.close()
        self.compute.shutdown(wait=True)

    # ----- the cluster ----------------------------------------------------------------------
    def add_nodes(self, *nodes: Mapping) -> None:
        for node in nodes:
            self.cache.apply_node("ADDED", node_info(node))

    def add_pods(self, *pods: Mapping) -> None:
        for pod in pods:
            self.cache.apply_pod("ADDED", pod_info(pod))

    # ----- policies -------------------------------------------------------------------------
    def store(self, name: str, namespace: str = "default") -> FilesystemStore:
        return FilesystemStore(self.root / namespace / name)

    def add_policy(self, name: str, **kwargs: Any) -> dict[str, Any]:
        obj = metapolicy_object(name, self.root, **kwargs)
        self.registry.apply_policy("ADDED", obj)
        return obj

    def promote(self, name: str, policy: SlotPolicy, namespace: str = "default") -> int:
        store = self.store(name, namespace)
        version = store.save(policy_to_checkpoint(policy, record=made_by_operator()))
        store.set_active(version)
        return version

    async def serving(self, name: str, version: int, namespace: str = "default") -> None:
        key = f"{namespace}/{name}"

        def served() -> bool:
            policy = self.registry.policies.get(key)
            return (
                policy is not None
                and policy.active is not None
                and (policy.active.version == version)
            )

        await wait_for(served, what=f"{key} serves version {version}")

    # ----- requests -------------------------------------------------------------------------
    async def call(self, verb: str, body: Any) -> tuple[int, Any, Mapping[str, str]]:
        assert self.client is not None
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = await self.client.post(
            f"/scheduler/{verb}", data=data, headers={"Content-Type": "application/json"}
        )
        return response.status, await response.json(), response.headers

    async def prioritize(
        self, pod: Mapping, names: Sequence[str]
    ) -> tuple[dict[str, int], Mapping[str, str]]:
        status, body, headers = await self.call(
            "prioritize", {"Pod": pod, "Nodes": None, "NodeNames": list(names)}
        )
        assert status == 200, body
        return {entry["Host"]: entry["Score"] for entry in body}, headers

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def harness(tmp_path) -> Harness:
    h = await Harness(tmp_path / "store").start()
    yield h
    await h.stop()


def untrained(architecture: str, nodes: Sequence[Mapping], seed: int = 0) -> SlotPolicy:
    """An untrained policy's choice is the myopic one (lowest latency + queueing), by design."""
    return make_policy(architecture, profiles(nodes), hidden=16, seed=seed)
