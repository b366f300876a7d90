"""
Proof that the embedded cluster is a usable stand-in for a Kubernetes API.

(a) objects go through the API like on a real server: CRUD, merge patches, the status
    subresource, watch streams; (b) a kopf operator runs in-process against it and its
    effects are observed through the API; (c) the CLI serves a separate process that the
    official ``kubernetes`` client can use, and stops promptly on a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kopf
import kubernetes
import pytest

from e2e.embedded import EmbeddedCluster

ROOT = Path(__file__).resolve().parents[2]

if TYPE_CHECKING:
    from conftest import Api

TIMEOUT = 10.0  # bound of every wait here; a hang fails the test, not the job
GROUP, VERSION, PLURAL = "metapolicy.dev", "v1alpha1", "metapolicies"
POLICIES = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"
NODES = "/api/v1/nodes"
EVENTS = "/api/v1/namespaces/default/events"


def node(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {"capacity": {"cpu": "4", "memory": "8Gi"}},
    }


EXPECT_NODES = "example.com/expect-nodes"  # the tiny operator below waits for these


def policy(name: str, *, expect_nodes: Sequence[str] = (), **spec: Any) -> dict[str, Any]:
    annotations = {EXPECT_NODES: ",".join(expect_nodes)} if expect_nodes else {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MetaPolicy",
        "metadata": {"name": name, "annotations": annotations},
        "spec": spec,
    }


# --- (a) the API itself ---------------------------------------------------------------


async def test_discovery_and_crds_come_from_the_crd_file(cluster: EmbeddedCluster, api: Api):
    resources = await api.get(f"/apis/{GROUP}/{VERSION}")
    entry = next(r for r in resources["resources"] if r["name"] == PLURAL)
    assert entry["kind"] == "MetaPolicy"
    assert entry["namespaced"] is True
    assert "metapolicies/status" in {r["name"] for r in resources["resources"]}

    crds = await api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    assert [crd["metadata"]["name"] for crd in crds["items"]] == [f"{PLURAL}.{GROUP}"]
    established = {c["type"]: c["status"] for c in crds["items"][0]["status"]["conditions"]}
    assert established["Established"] == "True"

    core = await api.get("/api/v1")
    assert core["groupVersion"] == "v1"  # kubectl and the dynamic client need it exact
    node_entries = {r["name"]: r for r in core["resources"] if r["name"].startswith("nodes")}
    assert node_entries["nodes"]["kind"] == "Node"
    assert node_entries["nodes/status"]["shortNames"] == []  # else kubectl: "ambiguous"

    namespaces = await api.get("/api/v1/namespaces")
    assert namespaces["kind"] == "NamespaceList"
    assert {"default", "kube-system"} <= {ns["metadata"]["name"] for ns in namespaces["items"]}


async def test_node_create_list_patch_watch_delete(api: Api, wait_for: Callable[..., Any]):
    events: list[dict[str, Any]] = []

    async def watch() -> None:
        async for event in api.watch(NODES, timeout_seconds=TIMEOUT):
            events.append(event)

    def seen(count: int) -> Callable[[], list[str]]:
        return lambda: [e["type"] for e in events] if len(events) >= count else []

    watcher = asyncio.create_task(watch())
    try:
        created = await api.create(NODES, node("n1", zone="a"))
        assert created["metadata"]["uid"]
        assert created["metadata"]["resourceVersion"]
        assert await wait_for(seen(1)) == ["ADDED"]

        listed = await api.get(NODES)
        assert [n["metadata"]["name"] for n in listed["items"]] == ["n1"]

        taint = {"key": "metapolicy.dev/draining", "effect": "NoSchedule"}
        patched = await api.patch(f"{NODES}/n1", {"spec": {"taints": [taint]}})
        assert patched["spec"]["taints"] == [taint]
        assert patched["metadata"]["labels"] == {"zone": "a"}  # merged, not replaced
        assert await wait_for(seen(2)) == ["ADDED", "MODIFIED"]
        assert events[1]["object"]["spec"]["taints"] == [taint]

        ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        status = await api.patch(f"{NODES}/n1/status", ready)
        assert status["status"]["conditions"] == ready["status"]["conditions"]
        assert status["status"]["capacity"] == {"cpu": "4", "memory": "8Gi"}
        assert await wait_for(seen(3)) == ["ADDED", "MODIFIED", "MODIFIED"]
        assert events[2]["object"]["status"] == status["status"]

        await api.delete(f"{NODES}/n1")
        assert await api.find(f"{NODES}/n1") is None
        assert (await api.get(NODES))["items"] == []
        assert await wait_for(seen(4)) == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(set(versions))  # every change, deletion included, is a new version


async def test_status_subresource_splits_status_from_the_rest(api: Api):
    await api.create(NODES, node("n1"))

    via_main = await api.patch(f"{NODES}/n1", {"spec": {"unschedulable": True}, "status": {"x": 1}})
    assert via_main["spec"]["unschedulable"] is True
    assert "x" not in via_main["status"]

    via_status = await api.patch(
        f"{NODES}/n1/status", {"spec": {"podCIDR": "x"}, "status": {"x": 1}}
    )
    assert via_status["status"]["x"] == 1
    assert "podCIDR" not in via_status["spec"]


async def test_resource_versions_guard_json_patches(api: Api):
    created = await api.create(NODES, node("n1"))
    version = created["metadata"]["resourceVersion"]
    guarded = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/f"]},
    ]
    json_patch = "application/json-patch+json"

    patched = await api.request("PATCH", f"{NODES}/n1", body=guarded, content_type=json_patch)
    assert patched["metadata"]["finalizers"] == ["example.com/f"]
    assert int(patched["metadata"]["resourceVersion"]) > int(version)

    with pytest.raises(api.Error) as stale:  # the same guard again: the version moved on
        await api.request("PATCH", f"{NODES}/n1", body=guarded, content_type=json_patch)
    assert stale.value.status == 422


async def test_label_and_field_selectors_filter_lists_and_watches(api: Api):
    await api.create(NODES, node("w1", role="worker", zone="a"))
    await api.create(NODES, node("w2", role="worker", zone="c"))
    await api.create(NODES, node("cp", role="control-plane"))

    async def names(query: str) -> list[str]:
        return sorted(n["metadata"]["name"] for n in (await api.get(f"{NODES}?{query}"))["items"])

    assert await names("labelSelector=role=worker") == ["w1", "w2"]
    assert await names("labelSelector=role=worker,zone in (a,b)") == ["w1"]
    assert await names("labelSelector=role!=worker") == ["cp"]
    assert await names("labelSelector=!zone") == ["cp"]
    assert await names("fieldSelector=metadata.name=w2") == ["w2"]

    watched = api.watch(f"{NODES}?labelSelector=zone", timeout_seconds=0.3)
    assert sorted([e["object"]["metadata"]["name"] async for e in watched]) == ["w1", "w2"]


async def test_events_with_generate_name_get_unique_names(api: Api):
    for _ in range(2):
        await api.create(EVENTS, {"metadata": {"generateName": "kopf-event-"}, "reason": "Test"})
    names = {e["metadata"]["name"] for e in (await api.get(EVENTS))["items"]}
    assert len(names) == 2
    assert all(name.startswith("kopf-event-") for name in names)


async def test_watch_resumes_after_a_resource_version(api: Api):
    await api.create(NODES, node("old"))
    since = (await api.get(NODES))["metadata"]["resourceVersion"]
    await api.create(NODES, node("new"))

    path = f"{NODES}?resourceVersion={since}"
    events = [e async for e in api.watch(path, timeout_seconds=0.5)]  # ends: timeoutSeconds

    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "new")]


# --- (b) kopf in-process ----------------------------------------------------------------


def tiny_operator() -> kopf.OperatorRegistry:
    """An operator in miniature: an index over nodes, status patches, events, a finalizer."""
    registry = kopf.OperatorRegistry()

    @kopf.index("v1", "nodes", id="node_names", registry=registry)  # id = kwarg name
    def node_names(name: str, **_: Any) -> dict[str, None]:
        return {name: None}

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def seen(body: kopf.Body, patch: kopf.Patch, node_names: kopf.Index, **_: Any) -> None:
        expected = filter(None, body.metadata.annotations.get(EXPECT_NODES, "").split(","))
        missing = set(expected) - set(node_names)
        if missing:  # kopf retries the handler; the index follows the nodes' watch stream
            raise kopf.TemporaryError(f"nodes not indexed yet: {missing}", delay=0.1)
        patch.status["phase"] = "Ready"  # the CRD's schema admits only its own phases
        patch.status["nodes"] = sorted(node_names)
        kopf.info(body, reason="Seen", message=f"{len(node_names)} nodes")

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)  # makes kopf add a finalizer
    def gone(body: kopf.Body, **_: Any) -> None:
        kopf.info(body, reason="Gone", message="bye")

    return registry


async def test_kopf_operator_runs_in_process(
    api: Api, run_operator: Callable[..., Any], wait_for: Callable[..., Any]
):
    async def seen_status(name: str) -> dict[str, Any] | None:
        obj = await api.find(f"{POLICIES}/{name}")
        status = (obj or {}).get("status", {})
        return status if status.get("phase") == "Ready" else None

    async def events_include(expected: set[tuple[str, str]]) -> bool:
        items = (await api.get(EVENTS))["items"]
        return expected <= {(e["involvedObject"]["name"], e["reason"]) for e in items}

    async def is_gone(path: str) -> bool:
        return await api.find(path) is None

    await api.create(NODES, node("n1"))
    await api.create(NODES, node("n2"))

    async with run_operator(registry=tiny_operator()) as task:
        await api.create(POLICIES, policy("first"))
        first = await wait_for(lambda: seen_status("first"), message='"first" is seen')
        assert first["nodes"] == ["n1", "n2"]

        await api.create(NODES, node("n3"))
        await api.create(POLICIES, policy("second", expect_nodes=["n3"]))
        second = await wait_for(lambda: seen_status("second"), message='"second" is seen')
        assert second["nodes"] == ["n1", "n2", "n3"]

        # Deletion goes through kopf's finalizer, added and removed with guarded JSON-patches.
        assert (await api.get(f"{POLICIES}/first"))["metadata"]["finalizers"]
        await api.delete(f"{POLICIES}/first")
        await wait_for(lambda: is_gone(f"{POLICIES}/first"), message='"first" is deleted')

        expected = {("first", "Seen"), ("second", "Seen"), ("first", "Gone")}
        await wait_for(lambda: events_include(expected), message=f"events {expected}")
        assert not task.done()


async def test_operator_module_is_loaded_into_its_own_registry(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    api: Api,
    run_operator: Callable[..., Any],
    wait_for: Callable[..., Any],
):
    source = f"""
        import kopf

        @kopf.on.create({GROUP!r}, {VERSION!r}, {PLURAL!r})
        def seen(patch, **_):
            patch.status['message'] = 'seen by the module'
    """
    (tmp_path / "tiny_operator_module.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    default_registry = kopf.get_default_registry()
    try:
        # Namespace-scoped, so kopf also lists and watches the namespaces.
        async with run_operator(modules=["tiny_operator_module"], namespaces=["default"]):
            await api.create(POLICIES, policy("p1"))

            async def message() -> str | None:
                obj = (await api.find(f"{POLICIES}/p1")) or {}
                return obj.get("status", {}).get("message")

            assert await wait_for(message) == "seen by the module"
    finally:
        sys.modules.pop("tiny_operator_module", None)
    assert kopf.get_default_registry() is default_registry


# --- (c) the CLI as a separate process -----------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_cli_serves_the_kubernetes_client_and_stops_on_signal(
    tmp_path: Path, crd_file: Path, signum: int
):
    kubeconfig = tmp_path / "kubeconfig"
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "e2e.embedded", "--port", "0"],
        *["--kubeconfig", str(kubeconfig), "--crd", str(crd_file)],
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)  # type: ignore[union-attr]
        word, url = line.decode().split()
        assert word == "READY"
        assert url.startswith("http://127.0.0.1:")

        client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        with client:
            core = kubernetes.client.CoreV1Api(client)
            body = node("cli-node", role="worker")
            await asyncio.to_thread(core.create_node, body, _request_timeout=TIMEOUT)
            nodes = await asyncio.to_thread(core.list_node, _request_timeout=TIMEOUT)
            assert [n.metadata.name for n in nodes.items] == ["cli-node"]
            assert nodes.items[0].metadata.labels == {"role": "worker"}

            # The client's watch returns only when the server ends the stream (timeoutSeconds).
            watch = kubernetes.watch.Watch()
            stream = watch.stream(core.list_node, timeout_seconds=1, _request_timeout=TIMEOUT)
            seen = await asyncio.to_thread(lambda: [e["object"].metadata.name for e in stream])
            assert seen == ["cli-node"]

            # An open watch stream must not hold the server's shutdown, and must end cleanly.
            endless = await asyncio.to_thread(
                core.list_node, watch=True, _preload_content=False, _request_timeout=TIMEOUT
            )
            first = json.loads(await asyncio.to_thread(endless.readline))
            assert first["type"] == "ADDED"

            started = time.monotonic()
            proc.send_signal(signum)
            assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
            assert time.monotonic() - started < 5
            assert await asyncio.to_thread(endless.read) == b""  # a clean end, not a reset
            endless.release_conn()

        host, port = url.removeprefix("http://").split(":")
        with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port))):
            pass
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
