"""Nodes, policies and status waits shared by the in-process operator tests."""

from __future__ import annotations

import json

import aiohttp

MODULE = "metapolicy_operator.handlers"
POLICIES = "/apis/metapolicy.dev/v1alpha1/namespaces/default/metapolicies"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
ANNOTATION = "metapolicy.dev/adapt-request"
SLOW = 120  # training and adaptation run in spawned worker processes

TINY_SPEC = {
    "hiddenSize": 16,
    "maxNodes": 8,
    "adaptation": {"settleSeconds": 1, "budgetSteps": 512, "backoffSeconds": 1},
    # 4 episodes give wide intervals; these tests are about the operator, not the threshold
    "validation": {"episodes": 4, "minRetention": 0.0, "onInconclusive": "promote"},
    "workload": {"episodeTasks": 32},
    "training": {"budgetSteps": 2048},
}


def node(name: str, cpu: str = "8", memory: str = "32Gi", latency: str | None = "5", **labels):
    annotations = {"metapolicy.dev/latency-ms": latency} if latency is not None else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def policy(name: str, **spec) -> dict:
    return {
        "apiVersion": "metapolicy.dev/v1alpha1",
        "kind": "MetaPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": TINY_SPEC | spec,
    }


async def phase_of(api, name: str) -> str | None:
    body = await api.find(f"{POLICIES}/{name}")
    return (body or {}).get("status", {}).get("phase")


async def status_when(api, name, predicate):
    body = await api.find(f"{POLICIES}/{name}")
    status = (body or {}).get("status") or {}
    return status if predicate(status) else None


def status_is(api, name, predicate):
    return lambda: status_when(api, name, predicate)


async def events_for(api, name: str) -> list[dict]:
    items = (await api.get("/api/v1/namespaces/default/events"))["items"]
    return [e for e in items if e.get("involvedObject", {}).get("name") == name]


async def events_with(api, wait_for, name: str, *reasons: str) -> dict[str, str]:
    """Wait until the object's Events include every reason; return them as reason -> message.

    kopf posts Events from a background queue, so an Event may land after the status
    write a test waited for.
    """

    async def posted() -> dict[str, str] | None:
        events = {e["reason"]: e["message"] for e in await events_for(api, name)}
        return events if set(reasons) <= set(events) else None

    return await wait_for(posted, SLOW, message=f"Events {reasons} on {name}")


async def stored_node_names(api, configmap: str) -> list[str]:
    body = await api.get(f"{CONFIGMAPS}/{configmap}")
    return json.loads(body["data"]["manifest.json"])["meta"]["node_names"]


async def ready_with(api, wait_for, name: str, count: int) -> dict:
    return await wait_for(
        status_is(
            api, name, lambda s: s.get("phase") == "Ready" and s.get("currentNodes") == count
        ),
        SLOW,
        message=f"{name} Ready with {count} nodes",
    )


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as r,
    ):
        return await r.text()


async def gone(api, path):
    return await api.find(path) is None
