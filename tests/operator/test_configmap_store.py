"""ConfigMapStore against the embedded Kubernetes API (KMock).

The store is synchronous; the emulator serves from its own thread, so the tests call the store
through ``asyncio.to_thread`` and inspect the ConfigMaps with the same official client.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import kubernetes
import pytest
import torch

from e2e.embedded import EmbeddedCluster
from metapolicy.store import (
    Checkpoint,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
)
from metapolicy_operator.configmap_store import (
    CheckpointApiError,
    CheckpointTooLarge,
    ConfigMapStore,
)

NAMESPACE = "default"
POLICY_LABEL = "metapolicy.dev/policy"
WEIGHTS_KEY = "weights.safetensors.gz"
OWNER = {
    "apiVersion": "metapolicy.dev/v1alpha1",
    "kind": "MetaPolicy",
    "metadata": {
        "name": "web",
        "namespace": NAMESPACE,
        "uid": "0b7c1a7e-5d1f-4c39-9d8e-1f2a3b4c5d6e",
    },
}


def make_checkpoint(seed: int = 0, size: int = 4) -> Checkpoint:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "actor.0.weight": torch.randn(size, 3, generator=g),
        "actor.0.bias": torch.randn(size, generator=g),
        "steps": torch.tensor(seed, dtype=torch.int64),
    }
    meta = {"node_names": ["node-b", "node-a"], "scores": {"reward": 1.5 + seed}}
    return Checkpoint(tensors=tensors, meta=meta)


def assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.tensors.keys() == b.tensors.keys()
    for name, t in a.tensors.items():
        assert b.tensors[name].dtype == t.dtype, name
        assert torch.equal(b.tensors[name], t), name
    assert a.meta == b.meta


@pytest.fixture
def core(cluster: EmbeddedCluster) -> kubernetes.client.CoreV1Api:
    api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    return kubernetes.client.CoreV1Api(api_client)


@pytest.fixture
def make_store(core: kubernetes.client.CoreV1Api) -> Callable[..., ConfigMapStore]:
    def make(policy: str = "web", **kwargs: Any) -> ConfigMapStore:
        kwargs.setdefault("owner", OWNER if policy == "web" else None)
        return ConfigMapStore(core, NAMESPACE, policy, **kwargs)

    return make


@pytest.fixture
def store(make_store: Callable[..., ConfigMapStore]) -> ConfigMapStore:
    return make_store()


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking store or client call off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def config_maps(core: kubernetes.client.CoreV1Api) -> dict[str, Any]:
    """Every ConfigMap in the namespace by name (no label selector: KMock ignores them)."""
    result = await call(core.list_namespaced_config_map, NAMESPACE)
    return {item.metadata.name: item for item in result.items}


async def save_all(store: ConfigMapStore, seeds: range) -> list[int]:
    return [await call(store.save, make_checkpoint(seed)) for seed in seeds]


async def test_round_trip_and_layout(store: ConfigMapStore, core) -> None:
    ckpt = make_checkpoint(1)

    version = await call(store.save, ckpt)

    assert version == 1
    assert_same(ckpt, await call(store.load, 1))
    config_map = (await config_maps(core))["web-v000001"]
    assert set(config_map.binary_data) == {WEIGHTS_KEY}
    assert set(config_map.data) == {"manifest.json"}
    weights = gzip.decompress(base64.b64decode(config_map.binary_data[WEIGHTS_KEY]))
    manifest = json.loads(config_map.data["manifest.json"])
    assert manifest == await call(store.manifest, 1)
    assert manifest["version"] == 1
    assert manifest["sha256"] == hashlib.sha256(weights).hexdigest()
    assert manifest["meta"] == ckpt.meta


async def test_labels(store: ConfigMapStore, core) -> None:
    await save_all(store, range(2))
    await call(store.set_active, 2)

    found = await config_maps(core)

    assert set(found) == {"web-v000001", "web-v000002", "web-active"}
    common = {"app.kubernetes.io/managed-by": "metapolicy-operator", POLICY_LABEL: "web"}
    for version in (1, 2):
        labels = found[f"web-v{version:06d}"].metadata.labels
        assert labels == {
            **common,
            "metapolicy.dev/version": str(version),
            "metapolicy.dev/kind": "checkpoint",
        }
    assert found["web-active"].metadata.labels == {**common, "metapolicy.dev/kind": "pointer"}


async def test_owner_references_on_every_config_map(store: ConfigMapStore, core) -> None:
    await save_all(store, range(2))
    await call(store.set_active, 1)

    found = await config_maps(core)

    assert len(found) == 3
    for config_map in found.values():
        refs = core.api_client.sanitize_for_serialization(config_map.metadata.owner_references)
        assert refs == [
            {
                "apiVersion": "metapolicy.dev/v1alpha1",
                "kind": "MetaPolicy",
                "name": "web",
                "uid": OWNER["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], config_map.metadata.name


async def test_no_owner_means_no_owner_references(make_store, core) -> None:
    store = make_store("db", owner=None)
    await call(store.save, make_checkpoint())

    assert not (await config_maps(core))["db-v000001"].metadata.owner_references


async def test_owner_must_have_a_uid_and_the_same_namespace(core) -> None:
    with pytest.raises(ValueError, match=r"metadata\.uid"):
        ConfigMapStore(core, NAMESPACE, "web", owner={"metadata": {"name": "web"}})
    elsewhere = {"metadata": {**OWNER["metadata"], "namespace": "kube-system"}}
    with pytest.raises(ValueError, match="kube-system"):
        ConfigMapStore(core, NAMESPACE, "web", owner=elsewhere)


async def test_versions_increase_and_old_ones_are_pruned(make_store, core) -> None:
    store = make_store(keep=3)

    assert await save_all(store, range(5)) == [1, 2, 3, 4, 5]

    assert await call(store.versions) == [3, 4, 5]
    assert set(await config_maps(core)) == {"web-v000003", "web-v000004", "web-v000005"}
    assert_same(make_checkpoint(4), await call(store.load, 5))
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint version 1"):
        await call(store.load, 1)


async def test_pruning_never_removes_the_active_version(make_store) -> None:
    store = make_store(keep=2)
    await call(store.save, make_checkpoint(1))
    await call(store.set_active, 1)

    assert await save_all(store, range(2, 5)) == [2, 3, 4]

    assert await call(store.versions) == [1, 3, 4]
    assert await call(store.active) == 1
    assert_same(make_checkpoint(1), await call(store.load, 1))


async def test_a_taken_name_is_never_overwritten(store: ConfigMapStore, core) -> None:
    await call(store.save, make_checkpoint(1))
    squatter = {"metadata": {"name": "web-v000002"}, "data": {"mine": "yes"}}
    await call(core.create_namespaced_config_map, NAMESPACE, squatter)

    version = await call(store.save, make_checkpoint(2))  # the create of v000002 answers 409

    assert version == 3
    assert (await config_maps(core))["web-v000002"].data == {"mine": "yes"}
    assert await call(store.versions) == [1, 3]  # unlabelled: not ours, not listed
    assert_same(make_checkpoint(2), await call(store.load, 3))


async def test_active_pointer(store: ConfigMapStore, core) -> None:
    await save_all(store, range(1, 4))
    assert await call(store.active) is None
    assert (await call(store.load_active))[0] == 3  # no pointer yet: newest valid

    await call(store.set_active, 2)
    assert await call(store.active) == 2
    version, ckpt = await call(store.load_active)
    assert version == 2
    assert_same(make_checkpoint(2), ckpt)

    await call(store.set_active, 3)  # moves the one pointer object
    pointers = [n for n in await config_maps(core) if not n.startswith("web-v")]
    assert pointers == ["web-active"]
    assert (await config_maps(core))["web-active"].data == {"version": "3"}
    assert await call(store.active) == 3


async def test_set_active_refuses_missing_or_corrupt_versions(store: ConfigMapStore, core) -> None:
    await save_all(store, range(1, 3))
    await call(store.set_active, 1)
    await patch_weights(core, "web-v000002", b"not gzip at all")

    with pytest.raises(CheckpointNotFoundError):
        await call(store.set_active, 7)
    with pytest.raises(CorruptCheckpointError):
        await call(store.set_active, 2)
    assert await call(store.active) == 1


async def test_unreadable_pointer_is_ignored(store: ConfigMapStore, core) -> None:
    await save_all(store, range(1, 3))
    await call(store.set_active, 1)
    await call(
        core.patch_namespaced_config_map, "web-active", NAMESPACE, {"data": {"version": "x"}}
    )

    assert await call(store.active) is None
    assert (await call(store.load_active))[0] == 2


async def patch_weights(core: kubernetes.client.CoreV1Api, name: str, raw: bytes) -> None:
    """Replace a version's gzipped weights with `raw`, gzipped and base64-encoded as stored."""
    encoded = base64.b64encode(gzip.compress(raw)).decode()
    await call(
        core.patch_namespaced_config_map, name, NAMESPACE, {"binaryData": {WEIGHTS_KEY: encoded}}
    )


def flipped_weights(config_map: Any) -> dict:
    weights = bytearray(gzip.decompress(base64.b64decode(config_map.binary_data[WEIGHTS_KEY])))
    weights[-1] ^= 0xFF  # inside tensor data, so only the checksum can notice
    return {"binaryData": {WEIGHTS_KEY: base64.b64encode(gzip.compress(bytes(weights))).decode()}}


def wrong_sha(config_map: Any) -> dict:
    manifest = json.loads(config_map.data["manifest.json"])
    manifest["sha256"] = "0" * 64
    return {"data": {"manifest.json": json.dumps(manifest)}}


def truncated_gzip(config_map: Any) -> dict:
    compressed = base64.b64decode(config_map.binary_data[WEIGHTS_KEY])
    return {"binaryData": {WEIGHTS_KEY: base64.b64encode(compressed[:-20]).decode()}}


def other_version(config_map: Any) -> dict:
    manifest = json.loads(config_map.data["manifest.json"])
    manifest["version"] = 1
    return {"data": {"manifest.json": json.dumps(manifest)}}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda cm: {"binaryData": {WEIGHTS_KEY: "!!not base64!!"}}, "bad base64"),
        (lambda cm: {"binaryData": {WEIGHTS_KEY: base64.b64encode(b"plain").decode()}}, "bad gzip"),
        (truncated_gzip, "truncated gzip"),
        (flipped_weights, "sha256 mismatch"),
        (wrong_sha, "sha256 mismatch"),
        (other_version, "manifest says version 1"),
        (lambda cm: {"binaryData": {WEIGHTS_KEY: None}}, f"missing binaryData.{WEIGHTS_KEY}"),
        (lambda cm: {"data": {"manifest.json": None}}, "missing data.manifest.json"),
        (lambda cm: {"data": {"manifest.json": "{not json"}}, "bad JSON"),
    ],
    ids=[
        "base64",
        "gzip",
        "truncated",
        "flipped",
        "sha",
        "version",
        "no-weights",
        "no-manifest",
        "json",
    ],
)
async def test_corrupt_version_is_refused_and_skipped(
    store: ConfigMapStore, core, caplog, damage, message
) -> None:
    await save_all(store, range(1, 3))
    config_map = (await config_maps(core))["web-v000002"]
    await call(core.patch_namespaced_config_map, "web-v000002", NAMESPACE, damage(config_map))

    with pytest.raises(CorruptCheckpointError, match=rf"version 2 .*{message}") as info:
        await call(store.load, 2)
    assert info.value.version == 2

    with caplog.at_level(logging.WARNING, logger="metapolicy.store"):
        version, ckpt = await call(store.latest_valid)
    assert version == 1
    assert_same(make_checkpoint(1), ckpt)
    assert "version 2 is corrupt" in caplog.text


async def test_load_active_falls_back_when_active_is_corrupt(
    store: ConfigMapStore, core, caplog
) -> None:
    await save_all(store, range(1, 4))
    await call(store.set_active, 2)
    for name in ("web-v000002", "web-v000003"):
        await patch_weights(core, name, b"garbage")

    with caplog.at_level(logging.WARNING, logger="metapolicy.store"):
        version, ckpt = await call(store.load_active)

    assert version == 1
    assert_same(make_checkpoint(1), ckpt)
    assert "active version 2 is unusable" in caplog.text
    assert await call(store.active) == 2  # reading never moves the pointer


async def test_a_config_map_without_our_labels_is_not_loaded(store: ConfigMapStore, core) -> None:
    await call(store.save, make_checkpoint(1))
    await call(
        core.patch_namespaced_config_map,
        "web-v000001",
        NAMESPACE,
        {"metadata": {"labels": {POLICY_LABEL: "someone-else"}}},
    )

    with pytest.raises(CorruptCheckpointError, match="not labelled as a checkpoint"):
        await call(store.load, 1)
    assert await call(store.versions) == []


async def test_too_large_checkpoint_is_refused_before_writing(store: ConfigMapStore, core) -> None:
    await call(store.save, make_checkpoint(1))
    before = await config_maps(core)
    big = make_checkpoint(2, size=100_000)  # 1.2 MB of random floats: gzip barely helps

    with pytest.raises(CheckpointTooLarge) as info:
        await call(store.save, big)

    message = str(info.value)
    assert "spec.storage.backend: filesystem" in message
    assert f"{store.max_bytes}-byte limit" in message
    assert f"is {info.value.size} bytes" in message
    assert info.value.size > store.max_bytes
    assert isinstance(info.value, CheckpointError)
    assert set(await config_maps(core)) == set(before)
    assert await call(store.versions) == [1]


async def test_api_errors_carry_status_and_reason(store: ConfigMapStore, core) -> None:
    store.max_bytes = 10 * 1024 * 1024  # past our own check, into the emulator's 1 MiB cap
    big = make_checkpoint(size=100_000)

    with pytest.raises(CheckpointApiError, match=r"create ConfigMap web-v000001.*HTTP 413") as info:
        await call(store.save, big)

    assert info.value.status == 413
    assert info.value.reason
    assert isinstance(info.value, CheckpointError)
    assert await config_maps(core) == {}


async def test_delete_all_leaves_no_config_map_of_the_policy(make_store, core) -> None:
    web, db = make_store("web"), make_store("db")
    await save_all(web, range(3))
    await call(web.set_active, 2)
    await save_all(db, range(2))

    await call(web.delete_all)

    remaining = await config_maps(core)
    assert [n for n, cm in remaining.items() if cm.metadata.labels[POLICY_LABEL] == "web"] == []
    assert set(remaining) == {"db-v000001", "db-v000002"}
    assert await call(web.versions) == []
    assert await call(web.active) is None
    assert await call(web.save, make_checkpoint()) == 1
    await call(web.delete_all)
    await call(web.delete_all)  # nothing left: still fine


async def test_policies_in_one_namespace_do_not_see_each_other(make_store) -> None:
    # "web-v2" versions are "web-v2-v000001": a prefix of neither the labels nor the names.
    web, web_v2 = make_store("web", keep=2), make_store("web-v2", keep=2)
    await save_all(web, range(3))
    await save_all(web_v2, range(10, 11))
    await call(web_v2.set_active, 1)

    assert await call(web.versions) == [2, 3]
    assert await call(web_v2.versions) == [1]
    assert await call(web.active) is None
    assert_same(make_checkpoint(10), await call(web_v2.load, 1))
    assert_same(make_checkpoint(2), await call(web.load, 3))


async def test_long_policy_names_fit_the_limits(make_store, core) -> None:
    base = "p" * 240
    first, second = make_store(base + "-one"), make_store(base + "-two")

    await call(first.save, make_checkpoint(1))
    await call(second.save, make_checkpoint(2))
    await call(first.set_active, 1)

    found = await config_maps(core)
    assert len(found) == 3
    for name, config_map in found.items():
        assert len(name) <= 253
        assert len(config_map.metadata.labels[POLICY_LABEL]) <= 63
    assert_same(make_checkpoint(1), await call(first.load, 1))
    assert_same(make_checkpoint(2), await call(second.load, 1))
    assert await call(second.active) is None


async def test_records_of_pruned_versions_move_to_the_journal(make_store, core) -> None:
    store = make_store(keep=2)
    for seed in range(1, 4):
        checkpoint = make_checkpoint(seed)
        record = {"outcome": "promoted", "trigger": "nodes", "finishedAt": f"2026-01-0{seed}"}
        await call(store.save, Checkpoint(tensors=checkpoint.tensors, meta={"record": record}))
    names = set(await config_maps(core))
    assert names == {"web-v000002", "web-v000003", "web-journal"}
    history = await call(store.history)
    assert [r["version"] for r in history] == [1, 2, 3]
    await call(store.delete_all)
    assert set(await config_maps(core)) == set()
