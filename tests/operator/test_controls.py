"""Lifecycle controls and recovery, in-process: pause/resume, inconclusive -> promote or abort,
rollback-to, a fine-tune cancelled by a newer node change, status rebuilt from the store."""

from __future__ import annotations

import asyncio
import urllib.request

import kubernetes

from metapolicy.adapt import zero_shot
from metapolicy.checkpoint import policy_from_checkpoint
from metapolicy_operator.configmap_store import ConfigMapStore
from metapolicy_operator.inventory import eligible_profiles
from metapolicy_operator.spec import parse_spec
from tests.operator.policies import (
    MODULE,
    POLICIES,
    SLOW,
    TINY_SPEC,
    events_with,
    node,
    policy,
    ready_with,
    status_is,
    status_when,
)

PROMOTE, ABORT, ROLLBACK_TO = (
    "metapolicy.dev/promote",
    "metapolicy.dev/abort",
    "metapolicy.dev/rollback-to",
)


async def annotate(api, name: str, key: str, value: str) -> None:
    await api.patch(f"{POLICIES}/{name}", {"metadata": {"annotations": {key: value}}})


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


async def test_pause_holds_adaptation_and_resume_reconciles_at_once(
    api, run_operator, wait_for, operator_env
):
    for i in range(3):
        await api.create("/api/v1/nodes", node(f"edge-{i}"))
    await api.create(POLICIES, policy("web"))
    async with run_operator(modules=[MODULE]):
        await ready_with(api, wait_for, "web", 3)
        await api.patch(f"{POLICIES}/web", {"spec": {"paused": True}})
        await wait_for(status_is(api, "web", lambda s: s.get("phase") == "Paused"), SLOW)
        await api.create("/api/v1/nodes", node("edge-3"))
        status = await wait_for(
            status_is(api, "web", lambda s: s.get("eligibleNodes") == 4), SLOW
        )  # the operator saw the new node ...
        assert status["phase"] == "Paused" and status["currentNodes"] == 3  # ... and held
        assert condition(status, "Paused")["status"] == "True"
        assert len(status["history"]) == 1
        await api.patch(f"{POLICIES}/web", {"spec": {"paused": False}})
        status = await ready_with(api, wait_for, "web", 4)
        assert condition(status, "Paused")["status"] == "False"


def core_api(cluster) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    )


async def straddling_threshold(cluster, version: int, spec: dict, nodes: list[dict]) -> float:
    """A minRetention inside the zero-shot candidate's retention interval for this change,
    computed with the library exactly as the operator's worker will (same episodes, seeds)."""
    store = ConfigMapStore(core_api(cluster), "default", "web")
    backup = policy_from_checkpoint(await asyncio.to_thread(store.load, version))
    profiles, _, _ = eligible_profiles(nodes, None)
    settings = parse_spec(spec).adaptation
    stage = await asyncio.to_thread(zero_shot, backup, profiles, settings)
    low, high = stage.record.retention_interval
    assert low < high, "the interval must have room for a threshold inside it"
    return (low + high) / 2


async def test_an_inconclusive_candidate_waits_for_promote_and_abort_decides_too(
    api, cluster, run_operator, wait_for, operator_env
):
    nodes = [node(f"edge-{i}") for i in range(3)]
    for body in nodes:
        await api.create("/api/v1/nodes", body)
    spec = TINY_SPEC | {
        "adaptation": {"settleSeconds": 0, "budgetSteps": 0, "backoffSeconds": 1},
        "validation": {"episodes": 4, "minRetention": 0.0, "onInconclusive": "pause"},
    }
    await api.create(POLICIES, policy("web", **spec))
    async with run_operator(modules=[MODULE]):
        await ready_with(api, wait_for, "web", 3)

        async def inconclusive_change(backup: int, new: dict) -> dict:
            spec["validation"]["minRetention"] = await straddling_threshold(
                cluster, backup, spec, [*nodes, new]
            )
            await api.patch(f"{POLICIES}/web", {"spec": {"validation": spec["validation"]}})
            await api.create("/api/v1/nodes", new)
            nodes.append(new)
            status = await wait_for(
                status_is(
                    api, "web", lambda s: condition(s, "Paused").get("reason") == "Inconclusive"
                ),
                SLOW,
            )
            assert status["phase"] == "Paused" and status["activeVersion"] == backup
            waiting = status["lastAdaptation"]
            assert waiting["outcome"] == "inconclusive" and "straddles" in waiting["reason"]
            assert "retention_inconclusive" in waiting["reasonCodes"]
            return waiting

        first = await inconclusive_change(1, node("edge-3", cpu="16", memory="64Gi"))
        await annotate(api, "web", PROMOTE, str(first["version"]))
        status = await ready_with(api, wait_for, "web", 4)
        assert status["activeVersion"] == first["version"]
        assert status["lastAdaptation"]["trigger"] == "promote"
        assert status["manualRequests"]["promote"]["state"].startswith("done: promoted")

        second = await inconclusive_change(first["version"], node("edge-4", cpu="4", memory="16Gi"))
        await api.patch(f"{POLICIES}/web", {"spec": {"paused": True}})  # no retry after the abort
        await annotate(api, "web", ABORT, "2026-11-27T12:00:00Z")
        status = await wait_for(
            status_is(
                api, "web", lambda s: (s.get("lastAdaptation") or {}).get("trigger") == "abort"
            ),
            SLOW,
        )
        assert status["lastAdaptation"]["outcome"] == "aborted"
        assert status["lastAdaptation"]["version"] == second["version"]
        assert status["activeVersion"] == first["version"]  # the aborted one never served


async def test_rollback_to_serves_an_old_version_again_and_refuses_a_missing_one(
    api, run_operator, wait_for, operator_env
):
    for i in range(3):
        await api.create("/api/v1/nodes", node(f"edge-{i}"))
    await api.create(POLICIES, policy("web"))
    async with run_operator(modules=[MODULE]):
        await ready_with(api, wait_for, "web", 3)
        await api.create("/api/v1/nodes", node("edge-3"))
        before = await ready_with(api, wait_for, "web", 4)
        await annotate(api, "web", ROLLBACK_TO, "1")
        # version 1 knows 3 nodes: it serves at once, as the backup of a new adaptation
        status = await wait_for(
            status_is(
                api,
                "web",
                lambda s: (
                    s.get("phase") == "Ready"
                    and s.get("currentNodes") == 4
                    and s.get("activeVersion", 0) > before["activeVersion"]
                ),
            ),
            SLOW,
        )
        triggers = [h["trigger"] for h in status["history"]]
        assert "rollback-to" in triggers
        rolled = status["history"][triggers.index("rollback-to")]
        assert rolled["version"] == 1 and rolled["outcome"] == "promoted"
        assert status["history"][triggers.index("rollback-to") + 1]["parentVersion"] == 1

        await annotate(api, "web", ROLLBACK_TO, "99")
        status = await wait_for(
            status_is(
                api,
                "web",
                lambda s: (
                    ((s.get("manualRequests") or {}).get("rollbackTo") or {}).get("received")
                    == "99"
                ),
            ),
            SLOW,
        )
        assert status["manualRequests"]["rollbackTo"]["state"].startswith("rejected: version 99")
        assert condition(status, "ManualRequest")["status"] == "False"
        await events_with(api, wait_for, "web", "RequestRefused")


async def test_a_node_change_during_the_fine_tune_cancels_it_and_starts_over(
    api, run_operator, wait_for, operator_env
):
    for i in range(3):
        await api.create("/api/v1/nodes", node(f"edge-{i}"))
    long = {"settleSeconds": 0, "budgetSteps": 200_000, "backoffSeconds": 1}
    await api.create(POLICIES, policy("web", adaptation=long))
    async with run_operator(modules=[MODULE]):
        await ready_with(api, wait_for, "web", 3)
        await api.create("/api/v1/nodes", node("edge-3"))
        await wait_for(
            status_is(
                api, "web", lambda s: s.get("currentNodes") == 4 and s["phase"] == "Adapting"
            ),
            SLOW,
        )  # the zero-shot candidate serves; the long fine-tune runs
        await api.patch(f"{POLICIES}/web", {"spec": {"adaptation": long | {"budgetSteps": 512}}})
        await api.create("/api/v1/nodes", node("edge-4"))
        status = await ready_with(api, wait_for, "web", 5)
        outcomes = [(h["trigger"], h["outcome"]) for h in status["history"]]
        assert ("nodes", "cancelled") in outcomes
        cancelled = status["history"][outcomes.index(("nodes", "cancelled"))]
        assert "superseded" in cancelled["reasonCodes"]
        last = status["lastAdaptation"]
        assert last["oldNodes"] == 4 and last["newNodes"] == 5  # from the served zero-shot


async def test_status_lost_between_writes_is_rebuilt_from_the_store(
    api, run_operator, wait_for, operator_env, metrics_port
):
    for i in range(2):
        await api.create("/api/v1/nodes", node(f"edge-{i}"))
    await api.create(POLICIES, policy("web"))
    async with run_operator(modules=[MODULE]):
        trained = await ready_with(api, wait_for, "web", 2)
    # what a crash between the store write and the status patch leaves: no record in status
    lost = {"status": {"history": None, "lastAdaptation": None, "eligibleNodes": 7}}
    await api.patch(f"{POLICIES}/web/status", lost)
    assert "history" not in (await status_when(api, "web", lambda s: True))
    async with run_operator(modules=[MODULE]):
        status = await wait_for(status_is(api, "web", lambda s: bool(s.get("history"))), SLOW)
        assert [h["version"] for h in status["history"]] == [1]
        assert status["history"][0]["recovered"] is True
        assert status["lastAdaptation"]["version"] == 1
        assert status["eligibleNodes"] == 2  # counters refreshed from the world
        assert status["activeVersion"] == trained["activeVersion"]
        await events_with(api, wait_for, "web", "Recovered")
        # this operator trained nothing: its metrics count the recovered record
        metrics = await asyncio.to_thread(scrape, f"http://127.0.0.1:{metrics_port}/metrics")
        assert "metapolicy_training_duration_seconds_count 1.0" in metrics


async def test_the_workload_source_is_reported_and_a_missing_trace_is_a_clear_error(
    api, run_operator, wait_for, operator_env, tmp_path
):
    for i in range(2):
        await api.create("/api/v1/nodes", node(f"edge-{i}"))
    observed = {"source": "observed", "minObservedTasks": 50, "episodeTasks": 32}
    await api.create(POLICIES, policy("seen", workload=observed))
    missing = {"source": "trace", "trace": {"path": str(tmp_path / "gone.csv")}}
    await api.create(POLICIES, policy("traced", workload=missing))
    async with run_operator(modules=[MODULE]):
        status = await ready_with(api, wait_for, "seen", 2)
        assert status["workload"]["requested"] == "observed"
        assert status["workload"]["source"] == "synthetic"  # nothing recorded yet
        assert condition(status, "WorkloadObserved")["status"] == "False"
        assert condition(status, "WorkloadObserved")["reason"] == "NothingRecorded"
        assert status["lastAdaptation"]["workloadSource"] == "synthetic"
        status = await wait_for(
            status_is(
                api,
                "traced",
                lambda s: condition(s, "Degraded").get("reason") == "WorkloadUnavailable",
            ),
            SLOW,
        )
        assert "gone.csv" in condition(status, "Degraded")["message"]
        assert "history" not in status  # nothing trained on a trace that is not there
        await events_with(api, wait_for, "traced", "WorkloadUnavailable")


async def test_a_pod_two_policies_select_is_a_condition_on_both(
    api, run_operator, wait_for, operator_env
):
    await api.create("/api/v1/nodes", node("edge-0"))
    await api.create(POLICIES, policy("left", podSelector={"matchLabels": {"team": "ml"}}))
    await api.create(POLICIES, policy("right", podSelector={}))  # every pod of the namespace
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "labels": {"team": "ml"}},
        "spec": {"containers": [{"name": "c", "image": "x",
                                 "resources": {"requests": {"cpu": "1"}}}]},
    }  # fmt: skip
    async with run_operator(modules=[MODULE]):
        await ready_with(api, wait_for, "left", 1)
        await api.create("/api/v1/namespaces/default/pods", pod)
        for name, other in (("left", "default/right"), ("right", "default/left")):
            status = await wait_for(
                status_is(
                    api, name, lambda s: condition(s, "PodSelector").get("status") == "False"
                ),
                SLOW,
            )
            assert f"1 with {other}" in condition(status, "PodSelector")["message"]
        await api.delete("/api/v1/namespaces/default/pods/p")
        await wait_for(
            status_is(api, "left", lambda s: condition(s, "PodSelector").get("status") == "True"),
            SLOW,
        )


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
