"""A 5,000-node node-set checkpoint in the ConfigMap store, against the embedded API server
(whose request bodies are capped at 1 MiB, as a real API server caps a ConfigMap)."""

from __future__ import annotations

import asyncio
import base64

import kubernetes
import pytest
import torch

from e2e.embedded import EmbeddedCluster
from metapolicy.checkpoint import policy_from_checkpoint, policy_to_checkpoint
from metapolicy.cluster import make_cluster
from metapolicy.compact import snap
from metapolicy.policy import make_policy
from metapolicy.store import CorruptCheckpointError
from metapolicy_operator.configmap_store import (
    MAX_BYTES,
    NODES_KEY,
    WEIGHTS_KEY,
    CheckpointTooLarge,
    ConfigMapStore,
)

NAMESPACE = "default"


@pytest.fixture
def core(cluster: EmbeddedCluster) -> kubernetes.client.CoreV1Api:
    api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    return kubernetes.client.CoreV1Api(api_client)


def trained_like(nodes: int, hidden: int = 64):
    """A policy whose slot table is as dense as a trained one (no zero rows to compress)."""
    policy = make_policy("node-set", make_cluster(nodes, seed=1), hidden)
    with torch.no_grad():
        policy.slot_table.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
    return snap(policy)


async def test_a_5000_node_checkpoint_fits_one_config_map_and_round_trips(core) -> None:
    store = ConfigMapStore(core, NAMESPACE, "huge")
    policy = trained_like(5000)
    checkpoint = policy_to_checkpoint(policy)
    body = store._version_body(checkpoint, 1)
    size = sum(len(v) for v in body["binaryData"].values()) + len(body["data"]["manifest.json"])
    assert size <= MAX_BYTES
    assert set(body["binaryData"]) == {WEIGHTS_KEY, NODES_KEY}
    assert "node_names" not in body["data"]["manifest.json"]

    version = await asyncio.to_thread(store.save, checkpoint)
    await asyncio.to_thread(store.set_active, version)
    loaded = policy_from_checkpoint(await asyncio.to_thread(store.load, version))
    assert loaded.slot_names == policy.slot_names and loaded.nodes == policy.nodes
    for name, tensor in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    manifest = await asyncio.to_thread(store.manifest, version)
    assert manifest["meta"]["node_names"] == policy.slot_names


async def test_a_damaged_node_list_is_a_corrupt_version(core) -> None:
    store = ConfigMapStore(core, NAMESPACE, "damaged")
    version = await asyncio.to_thread(store.save, policy_to_checkpoint(trained_like(2000, 16)))
    name = f"damaged-v{version:06d}"
    bad = base64.b64encode(b"not gzip").decode()
    patch = {"binaryData": {NODES_KEY: bad}}
    await asyncio.to_thread(core.patch_namespaced_config_map, name, NAMESPACE, patch)
    with pytest.raises(CorruptCheckpointError, match=r"nodes\.json\.gz"):
        await asyncio.to_thread(store.load, version)


def test_what_does_not_fit_says_so_before_writing() -> None:
    store = ConfigMapStore(None, NAMESPACE, "wide")
    with pytest.raises(CheckpointTooLarge, match="filesystem"):
        store._version_body(policy_to_checkpoint(trained_like(5000, hidden=128)), 1)
