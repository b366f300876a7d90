"""The observed trace in a ConfigMap next to the checkpoints (embedded Kubernetes API)."""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes
import pytest

from e2e.embedded import EmbeddedCluster
from metapolicy.store import Checkpoint, CheckpointError
from metapolicy_operator.configmap_store import ConfigMapStore

NAMESPACE = "default"
OWNER = {
    "apiVersion": "metapolicy.dev/v1alpha1",
    "kind": "MetaPolicy",
    "metadata": {"name": "web", "namespace": NAMESPACE, "uid": "5d1f0b7c-1a7e-4c39-9d8e-1f2a3b4c"},
}


@pytest.fixture
def core(cluster: EmbeddedCluster) -> kubernetes.client.CoreV1Api:
    api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    return kubernetes.client.CoreV1Api(api_client)


async def call(fn, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def names(core) -> set[str]:
    result = await call(core.list_namespaced_config_map, NAMESPACE)
    return {item.metadata.name for item in result.items}


async def test_trace_is_stored_replaced_and_deleted_with_the_policy(core) -> None:
    store = ConfigMapStore(core, NAMESPACE, "web", owner=OWNER)
    other = ConfigMapStore(core, NAMESPACE, "db")
    assert await call(store.load_trace) is None
    await call(store.save_trace, b"\x1f\x8b first")
    await call(store.save_trace, b"\x1f\x8b second")
    await call(other.save_trace, b"db's")
    assert await call(store.load_trace) == b"\x1f\x8b second"
    assert "web-trace" in await names(core)
    config_map = await call(core.read_namespaced_config_map, "web-trace", NAMESPACE)
    assert config_map.metadata.labels["metapolicy.dev/kind"] == "trace"
    assert config_map.metadata.owner_references[0].name == "web"
    checkpoint = Checkpoint(tensors={}, meta={"node_names": []})
    assert await call(store.versions) == []  # a trace is not a version
    await call(store.save, checkpoint)
    await call(store.delete_all)
    assert await names(core) == {"db-trace"}
    assert await call(other.load_trace) == b"db's"


async def test_a_trace_over_the_config_map_limit_is_refused_before_writing(core) -> None:
    store = ConfigMapStore(core, NAMESPACE, "web")
    with pytest.raises(CheckpointError, match="over the"):
        await call(store.save_trace, b"x" * (store.trace_limit + 1))
    assert await names(core) == set()
    # the largest allowed trace fits in a ConfigMap as the API server counts it
    await call(store.save_trace, bytes(range(256)) * (store.trace_limit // 256))
    assert len(await call(store.load_trace)) == store.trace_limit // 256 * 256


async def test_a_foreign_config_map_of_that_name_is_not_overwritten(core) -> None:
    body = {"metadata": {"name": "web-trace"}, "data": {"mine": "yes"}}
    await call(core.create_namespaced_config_map, NAMESPACE, body)
    store = ConfigMapStore(core, NAMESPACE, "web")
    assert await call(store.load_trace) is None
    with pytest.raises(CheckpointError, match="not the observed trace"):
        await call(store.save_trace, b"data")
