"""The emulator's pods/binding subresource: how a scheduler (e2e/scheduler.py) places a pod.

As the API server's BindingREST: `spec.nodeName` and `PodScheduled=True` are set, the answer
is a Status with code 201, a watcher sees one event, and a pod that is already bound,
being deleted or missing is refused (409, 409, 404).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Api

PODS = "/api/v1/namespaces/default/pods"


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"schedulerName": "metapolicy-scheduler", "containers": [{"name": "c"}]},
        "status": {"phase": "Pending"},
    }


def binding(name: str, node: str) -> dict[str, Any]:
    target = {"apiVersion": "v1", "kind": "Node", "name": node}
    return {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": target}


async def test_binding_sets_the_node_and_the_scheduled_condition(api: Api):
    created = await api.create(PODS, pod("p"))
    answer = await api.request("POST", f"{PODS}/p/binding", body=binding("p", "n1"))
    assert (answer["kind"], answer["status"], answer["code"]) == ("Status", "Success", 201)
    bound = await api.get(f"{PODS}/p")
    assert bound["spec"]["nodeName"] == "n1"
    (condition,) = bound["status"]["conditions"]
    assert (condition["type"], condition["status"]) == ("PodScheduled", "True")
    assert bound["status"]["phase"] == "Pending"  # the kubelet's job, not the binding's
    assert int(bound["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


async def test_a_watcher_sees_the_binding(api: Api):
    await api.create(PODS, pod("p"))
    version = (await api.get(PODS))["metadata"]["resourceVersion"]
    await api.request("POST", f"{PODS}/p/binding", body=binding("p", "n1"))
    events = [e async for e in api.watch(f"{PODS}?resourceVersion={version}", timeout_seconds=0.3)]
    # One event with the bound pod (the emulator replays changes after a resourceVersion as
    # ADDED where the API server says MODIFIED; watchers treat both as "the object is now").
    assert [e["object"]["spec"].get("nodeName") for e in events] == ["n1"]
    assert events[0]["type"] in ("ADDED", "MODIFIED")


async def test_binding_a_bound_or_missing_pod_is_refused(api: Api):
    await api.create(PODS, pod("p"))
    await api.request("POST", f"{PODS}/p/binding", body=binding("p", "n1"))
    with pytest.raises(api.Error) as twice:
        await api.request("POST", f"{PODS}/p/binding", body=binding("p", "n2"))
    assert twice.value.status == 409
    assert (await api.get(f"{PODS}/p"))["spec"]["nodeName"] == "n1"
    with pytest.raises(api.Error) as missing:
        await api.request("POST", f"{PODS}/q/binding", body=binding("q", "n1"))
    assert missing.value.status == 404
    with pytest.raises(api.Error) as no_target:
        await api.request("POST", f"{PODS}/p/binding", body={"kind": "Binding"})
    assert no_target.value.status == 400
