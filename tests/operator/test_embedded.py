"""
Proof that the embedded cluster is a usable stand-in for a Kubernetes API.

(a) objects go through the API like on a real server: CRUD, merge patches, the status
    subresource, watch streams; (b) a kopf operator runs in-process against it and its
    effects are observed through the API; (c) the CLI serves a separate process that the
    official ``kubernetes`` client can use, and stops promptly on a signal; (d) what kubectl
    needs: OpenAPI documents, server-side tables, admission with the CRD's own schema
    (defaulting, pruning, validation, CEL) worded as the API server words it, every patch
    type. tests/e2e/test_kubectl.py drives the real kubectl against the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kmock
import kopf
import kubernetes
import pytest
import yaml

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


# --- (d) what kubectl needs: OpenAPI, tables, admission, every patch type -------------------

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
MERGE, JSON_PATCH = "application/merge-patch+json", "application/json-patch+json"
STRATEGIC, APPLY = "application/strategic-merge-patch+json", "application/apply-patch+yaml"
CRD_SCHEMA = yaml.safe_load((ROOT / "crds" / "metapolicy.yaml").read_text())["spec"]["versions"][0]


async def call(
    api: Api,
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str | None = None,
    accept: str | None = None,
) -> tuple[int, Any, Any]:
    """(status, parsed body, headers) of one request, whatever its status."""
    headers = {k: v for k, v in {"Content-Type": content_type, "Accept": accept}.items() if v}
    data = None if body is None else json.dumps(body)
    async with api.session.request(method, path, data=data, headers=headers) as response:
        return response.status, await response.json(content_type=None), response.headers


async def test_openapi_v3_describes_the_crd_from_its_own_schema(api: Api):
    discovery = await api.get("/openapi/v3")
    assert {"api/v1", f"apis/{GROUP}/{VERSION}"} <= set(discovery["paths"])
    url = discovery["paths"][f"apis/{GROUP}/{VERSION}"]["serverRelativeURL"]
    assert url.startswith(f"/openapi/v3/apis/{GROUP}/{VERSION}?hash=")

    doc = await api.get(url)
    schema = doc["components"]["schemas"][f"dev.metapolicy.{VERSION}.MetaPolicy"]
    expected = CRD_SCHEMA["schema"]["openAPIV3Schema"]["properties"]
    assert schema["properties"]["spec"] == expected["spec"]  # the CRD's, not a copy by hand
    assert schema["properties"]["status"] == expected["status"]
    assert schema["x-kubernetes-group-version-kind"] == [
        {"group": GROUP, "kind": "MetaPolicy", "version": VERSION}
    ]
    meta_ref = schema["properties"]["metadata"]["allOf"][0]["$ref"].rsplit("/", 1)[1]
    assert meta_ref in doc["components"]["schemas"]

    # kubectl leaves validation to the server when PATCH takes fieldValidation, and sends
    # a JSON merge patch (not a strategic one) for a kind whose PATCH does not accept it.
    patch = doc["paths"][f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}/{{name}}"]
    patch = patch["patch"]
    assert patch["x-kubernetes-group-version-kind"]["kind"] == "MetaPolicy"
    assert "fieldValidation" in {p["name"] for p in patch["parameters"]}
    assert STRATEGIC not in patch["requestBody"]["content"]
    assert MERGE in patch["requestBody"]["content"]


async def test_openapi_v3_of_built_ins_has_real_schemas_and_strategic_merge(api: Api):
    core = await api.get("/openapi/v3/api/v1")
    node = core["components"]["schemas"]["io.k8s.api.core.v1.Node"]
    assert node["x-kubernetes-group-version-kind"] == [
        {"group": "", "kind": "Node", "version": "v1"}
    ]
    assert node["type"] == "object"  # not the ["object", "null"] of a JSON Schema
    status = core["components"]["schemas"]["io.k8s.api.core.v1.NodeStatus"]
    assert status["properties"]["conditions"]["x-kubernetes-patch-merge-key"] == "type"
    patch = core["paths"]["/api/v1/nodes/{name}"]["patch"]
    assert STRATEGIC in patch["requestBody"]["content"]
    assert "/api/v1/namespaces/{namespace}/pods/{name}/status" in core["paths"]


async def test_openapi_v2_is_served_as_json_only(api: Api):
    protobuf = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
    status, body, _ = await call(api, "GET", "/openapi/v2", accept=protobuf)
    assert (status, body["reason"]) == (406, "NotAcceptable")  # kubectl goes on without it
    status, body, _ = await call(api, "GET", "/openapi/v2", accept="application/json")
    assert status == 200 and body["swagger"] == "2.0"
    assert f"dev.metapolicy.{VERSION}.MetaPolicy" in body["definitions"]


async def test_tables_show_the_crd_printer_columns(api: Api):
    await api.create(POLICIES, policy("p1", maxNodes=12))
    status = {"phase": "Ready", "currentNodes": 3, "eligibleNodes": 4, "activeVersion": 2}
    status["lastAdaptation"] = {"strategy": "zero_padding", "performanceRetention": 0.987}
    await api.patch(f"{POLICIES}/p1/status", {"status": status})

    code, table, _ = await call(api, "GET", POLICIES, accept=TABLE)
    assert code == 200 and (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    columns = {c["name"]: c for c in table["columnDefinitions"]}
    assert list(columns) == [
        "Name", "Nodes", "Max", "Phase", "Strategy", "Retention", "Version",
        "Eligible", "Message", "Age",
    ]  # fmt: skip
    assert (columns["Eligible"]["priority"], columns["Phase"]["priority"]) == (1, 0)
    assert columns["Max"]["type"] == "integer" and columns["Age"]["type"] == "date"
    (row,) = table["rows"]
    assert row["cells"][:9] == ["p1", 3, 12, "Ready", "zero_padding", 0.987, 2, 4, None]
    assert re.fullmatch(r"\d+s", row["cells"][9])  # an age, as kubectl prints it
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "p1"

    _, full, _ = await call(api, "GET", f"{POLICIES}/p1?includeObject=Object", accept=TABLE)
    assert full["rows"][0]["object"]["status"]["phase"] == "Ready"
    assert len(full["rows"]) == 1


async def test_tables_of_cluster_scoped_nodes_use_the_servers_columns(api: Api):
    body = node("n1", **{"node-role.kubernetes.io/worker": ""})
    body["status"] |= {
        "conditions": [{"type": "Ready", "status": "True"}],
        "nodeInfo": {"kubeletVersion": "v1.37.0"},
        "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
    }
    await api.create(NODES, body)
    await api.create(NODES, node("n2"))
    await api.patch(f"{NODES}/n2", {"spec": {"unschedulable": True}})

    _, table, _ = await call(api, "GET", NODES, accept=TABLE)
    names = [c["name"] for c in table["columnDefinitions"] if c["priority"] == 0]
    assert names == ["Name", "Status", "Roles", "Age", "Version"]
    rows = {row["cells"][0]: row["cells"] for row in table["rows"]}
    assert rows["n1"][1:3] == ["Ready", "worker"] and rows["n1"][4:6] == ["v1.37.0", "10.0.0.1"]
    assert rows["n2"][1:3] == ["Unknown,SchedulingDisabled", "<none>"]


async def test_admission_defaults_the_spec_and_serves_it_defaulted(api: Api):
    created = await api.create(POLICIES, policy("p1"))
    assert created["spec"]["maxNodes"] == 20
    assert created["spec"]["adaptation"]["settleSeconds"] == 10
    assert (await api.get(f"{POLICIES}/p1"))["spec"] == created["spec"]


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (
            {"maxNodes": 0},
            "spec.maxNodes",
            "Invalid value: 0: spec.maxNodes in body should be greater than or equal to 1",
        ),
        (
            {"architecture": "mlp"},
            "spec.architecture",
            'Unsupported value: "mlp": supported values: "node-set", "slot-mlp"',
        ),
        (
            {"maxNodes": "ten"},
            "spec.maxNodes",
            'Invalid value: "string": spec.maxNodes in body must be of type integer: "string"',
        ),
        (
            {"nodeSelector": {"matchExpressions": [{"key": "zone", "operator": "In"}]}},
            "spec.nodeSelector.matchExpressions[0].values",
            "Invalid value: values must be non-empty when operator is In or NotIn, and empty "
            "when operator is Exists or DoesNotExist",
        ),
        (
            {"storage": {"backend": "filesystem"}},
            "spec.storage.path",
            "Required value: storage.path is required when storage.backend is filesystem",
        ),
    ],
    ids=["minimum", "enum", "type", "cel", "cel-required"],
)
async def test_admission_rejects_an_invalid_spec_as_the_api_server(
    api: Api, spec: dict[str, Any], field: str, message: str
):
    code, status, _ = await call(api, "POST", POLICIES, policy("bad", **spec))
    assert code == 422 and status["kind"] == "Status" and status["reason"] == "Invalid"
    cause = status["details"]["causes"][0]
    assert (cause["field"], cause["message"]) == (field, message)
    assert status["message"].startswith(f'MetaPolicy.{GROUP} "bad" is invalid: ')
    assert f"{field}: {message}" in status["message"]
    assert await api.find(f"{POLICIES}/bad") is None

    await api.create(POLICIES, policy("good"))  # a patch to the same is rejected the same way
    code, status, _ = await call(
        api, "PATCH", f"{POLICIES}/good", {"spec": spec}, content_type=MERGE
    )
    assert code == 422 and status["details"]["causes"][0]["field"] == field
    assert (await api.get(f"{POLICIES}/good"))["spec"]["maxNodes"] == 20


async def test_unknown_fields_are_an_error_when_strict_and_pruned_with_a_warning_else(api: Api):
    body = policy("p1", maxNode=10)  # a typo
    code, status, _ = await call(api, "POST", f"{POLICIES}?fieldValidation=Strict", body)
    assert (code, status["reason"]) == (400, "BadRequest")
    assert status["message"] == (
        'MetaPolicy in version "v1alpha1" cannot be handled as a MetaPolicy: '
        'strict decoding error: unknown field "spec.maxNode"'
    )

    code, created, headers = await call(api, "POST", POLICIES, body)  # Warn: the default
    assert code == 200 and "maxNode" not in created["spec"]
    assert headers.getall("Warning") == ['299 - "unknown field \\"spec.maxNode\\""']

    patch = {"spec": {"bogus": 1}}
    url = f"{POLICIES}/p1?fieldValidation=Strict"
    code, status, _ = await call(api, "PATCH", url, patch, content_type=MERGE)
    assert code == 422 and status["details"]["causes"][0]["field"] == "patch"
    assert 'unknown field "spec.bogus"' in status["message"]
    url = f"{POLICIES}/p1?fieldValidation=Ignore"
    code, patched, headers = await call(api, "PATCH", url, patch, content_type=MERGE)
    assert code == 200 and "bogus" not in patched["spec"] and "Warning" not in headers


async def test_status_subresource_is_validated_on_its_own(api: Api):
    await api.create(POLICIES, policy("p1"))
    bad = {"status": {"phase": "Seen"}}
    code, status, _ = await call(api, "PATCH", f"{POLICIES}/p1/status", bad, content_type=MERGE)
    assert code == 422 and status["details"]["causes"][0]["field"] == "status.phase"

    # Written through the main resource, status is ignored (not validated, not stored).
    patched = await api.patch(f"{POLICIES}/p1", {"spec": {"maxNodes": 5}, "status": bad["status"]})
    assert patched["spec"]["maxNodes"] == 5 and "status" not in patched
    fine = {"status": {"phase": "Ready", "kopf": {"progress": {"any": {"thing": 1}}}}}
    patched = await api.patch(f"{POLICIES}/p1/status", fine)
    assert patched["status"] == fine["status"]  # status.kopf preserves unknown fields


async def test_an_object_stored_invalid_can_still_get_metadata_changes(
    cluster: EmbeddedCluster, api: Api
):
    """Validation ratchets: kopf must be able to add its finalizer to an old object."""
    resource = kmock.resource(GROUP, VERSION, PLURAL)
    cluster.emulator.seed(resource, policy("old", maxNodes=0) | {"metadata": {
        "name": "old", "namespace": "default"}})  # fmt: skip
    patched = await api.patch(f"{POLICIES}/old", {"metadata": {"finalizers": ["example.com/f"]}})
    assert patched["metadata"]["finalizers"] == ["example.com/f"]
    code, _, _ = await call(
        api, "PATCH", f"{POLICIES}/old", {"spec": {"hiddenSize": 32}}, content_type=MERGE
    )
    assert code == 422  # a spec change is validated again, and maxNodes: 0 is still wrong


async def test_defaults_added_to_the_crd_show_on_objects_already_stored(api: Api):
    await api.create(POLICIES, policy("p1"))
    path = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/newField"
    added = {"type": "string", "default": "x", "description": "added later"}
    crd = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}"
    op = [{"op": "add", "path": path, "value": added}]
    await api.request("PATCH", crd, body=op, content_type=JSON_PATCH)
    assert (await api.get(f"{POLICIES}/p1"))["spec"]["newField"] == "x"  # defaulted on read
    listed = await api.get(POLICIES)
    assert listed["items"][0]["spec"]["newField"] == "x"


async def test_every_patch_type_and_replace(api: Api):
    body = node("n1")
    body["status"]["conditions"] = [
        {"type": "Ready", "status": "True"},
        {"type": "MemoryPressure", "status": "False"},
    ]
    created = await api.create(NODES, body)

    # Strategic merge: conditions merge by their "type" key, directives are not stored.
    smp = {
        "status": {
            "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "MemoryPressure"}],
            "conditions": [{"type": "Ready", "status": "False"}],
        }
    }
    status = await api.request("PATCH", f"{NODES}/n1/status", body=smp, content_type=STRATEGIC)
    assert status["status"]["conditions"] == [
        {"type": "Ready", "status": "False"},
        {"type": "MemoryPressure", "status": "False"},
    ]
    code, error, _ = await call(  # not for custom resources, as on a real server
        api, "PATCH", POLICIES + "/x", {"spec": {}}, content_type=STRATEGIC
    )
    assert code in (404, 415)
    await api.create(POLICIES, policy("p1"))
    code, error, _ = await call(api, "PATCH", f"{POLICIES}/p1", {}, content_type=STRATEGIC)
    assert (code, error["reason"]) == (415, "UnsupportedMediaType")

    # Replace (PUT): the resourceVersion is a precondition.
    current = await api.get(f"{NODES}/n1")
    current["metadata"]["labels"] = {"replaced": "yes"}
    replaced = await api.request("PUT", f"{NODES}/n1", body=current)
    assert replaced["metadata"]["labels"] == {"replaced": "yes"}
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    code, error, _ = await call(api, "PUT", f"{NODES}/n1", current)  # stale now
    assert (code, error["reason"]) == (409, "Conflict")

    # Server-side apply creates what does not exist, and merges into what does.
    applied = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n9", "labels": {"a": "1"}}}
    url = f"{NODES}/n9?fieldManager=test"
    code, created, _ = await call(api, "PATCH", url, applied, content_type=APPLY)
    assert code == 200 and created["metadata"]["labels"] == {"a": "1"}
    applied["metadata"]["labels"] = {"b": "2"}
    _, merged, _ = await call(api, "PATCH", url, applied, content_type=APPLY)
    assert merged["metadata"]["labels"] == {"a": "1", "b": "2"}


async def test_generation_counts_spec_changes_only(api: Api):
    created = await api.create(POLICIES, policy("p1", maxNodes=5))
    assert created["metadata"]["generation"] == 1
    same = await api.patch(f"{POLICIES}/p1", {"spec": {"maxNodes": 5}})
    assert same["metadata"]["generation"] == 1
    labelled = await api.patch(f"{POLICIES}/p1", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 1
    changed = await api.patch(f"{POLICIES}/p1", {"spec": {"maxNodes": 6}})
    assert changed["metadata"]["generation"] == 2
    assert int(changed["metadata"]["resourceVersion"]) > int(
        labelled["metadata"]["resourceVersion"]
    )


async def test_not_found_is_worded_as_the_api_server(api: Api):
    code, status, _ = await call(api, "GET", f"{POLICIES}/missing")
    assert (code, status["reason"]) == (404, "NotFound")
    assert status["message"] == f'{PLURAL}.{GROUP} "missing" not found'
    code, status, _ = await call(api, "DELETE", f"{NODES}/missing")
    assert (code, status["message"]) == (404, 'nodes "missing" not found')


async def test_watch_list_ends_its_initial_events_with_a_bookmark(api: Api):
    await api.create(NODES, node("n1"))
    path = (
        f"{NODES}?sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"
    )
    events = [e async for e in api.watch(path, timeout_seconds=0.3)]
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    annotations = events[1]["object"]["metadata"]["annotations"]
    assert annotations == {"k8s.io/initial-events-end": "true"}
