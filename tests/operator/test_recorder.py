"""The workload recorder: kopf in-process against the embedded cluster (KMock), the trace in the
policy's ConfigMap store. Only the recorder's handlers run here (no training)."""

from __future__ import annotations

import asyncio
import time
import types
from datetime import UTC, datetime
from typing import Any

import kopf
import kubernetes
import pytest

from metapolicy.observed import ObservedTrace
from metapolicy.store import FilesystemStore
from metapolicy_operator import recorder
from metapolicy_operator.configmap_store import ConfigMapStore
from metapolicy_operator.recorder import RECORDER_KEY, Recorder, Recording, _flush, pod_record
from metapolicy_operator.spec import WorkloadSource

RUNTIME_KEY = "metapolicy-runtime"
POLICIES = "/apis/metapolicy.dev/v1alpha1/namespaces/default/metapolicies"
PODS = "/api/v1/namespaces/{}/pods"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name: str, namespace: str = "default", cpu: str = "500m", **labels) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "x",
                    "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}},
                }
            ]
        },
    }


def policy(name: str = "web", **spec: Any) -> dict:
    spec = {"podSelector": {"matchLabels": {"app": "web"}}, "workload": {
        "recording": {"flushSeconds": 1}}} | spec  # fmt: skip
    return {
        "apiVersion": "metapolicy.dev/v1alpha1",
        "kind": "MetaPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def scheduled(t: float) -> dict:
    return {
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": iso(t)}
            ],
        }
    }


def finished(t: float, phase: str = "Succeeded") -> dict:
    return {
        "status": {
            "phase": phase,
            "containerStatuses": [
                {"name": "c", "state": {"terminated": {"exitCode": 0, "finishedAt": iso(t)}}}
            ],
        }
    }


@pytest.fixture
def core(cluster) -> kubernetes.client.CoreV1Api:
    client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    return kubernetes.client.CoreV1Api(client)


@pytest.fixture
def recording_registry(core):
    """The recorder's handlers alone, with a runtime that carries the test's API client, and
    the Recorder itself handed back so tests can count flushes."""
    registry = kopf.OperatorRegistry()
    shared = Recorder()

    @kopf.on.startup(registry=registry)
    async def provide(memo: kopf.Memo, **_: Any) -> None:
        memo[RUNTIME_KEY] = types.SimpleNamespace(core=core)
        memo[RECORDER_KEY] = shared

    previous = kopf.get_default_registry()
    kopf.set_default_registry(registry)
    try:
        recorder.register(RUNTIME_KEY)
    finally:
        kopf.set_default_registry(previous)
    return registry, shared


def stored(core, name: str = "web") -> ObservedTrace | None:
    data = ConfigMapStore(core, "default", name).load_trace()
    return None if data is None else ObservedTrace.decode(data)


async def trace_when(core, predicate, wait_for, name: str = "web") -> ObservedTrace:
    async def check():
        trace = await asyncio.to_thread(stored, core, name)
        return trace if trace is not None and predicate(trace) else None

    return await wait_for(check, message=f"stored trace of {name}")


async def test_matching_pods_are_recorded_through_their_life(
    api, core, run_operator, wait_for, recording_registry
):
    registry, shared = recording_registry
    await api.create(POLICIES, policy())
    await api.create("/api/v1/namespaces", {"metadata": {"name": "other"}})
    async with run_operator(registry=registry):
        created = await api.create(PODS.format("default"), pod("web-1", app="web"))
        await api.create(PODS.format("default"), pod("db-1", app="db"))  # not selected
        await api.create(PODS.format("other"), pod("web-2", "other", app="web"))  # elsewhere
        await api.create(PODS.format("default"), pod("web-pending", cpu="2", app="web"))
        t0 = datetime.fromisoformat(created["metadata"]["creationTimestamp"]).timestamp()
        path = PODS.format("default") + "/web-1/status"
        await api.patch(path, scheduled(t0 + 2))
        trace = await trace_when(core, lambda t: len(t.open) == 2 and t.ran() == 1, wait_for)
        await api.patch(path, finished(t0 + 42))
        trace = await trace_when(core, lambda t: len(t.closed) == 1, wait_for)
        (done,) = trace.closed
        assert (done.created, done.scheduled, done.ended) == (t0, t0 + 2, t0 + 42)
        assert (done.cpu, done.memory_mib) == (0.5, 1024.0)
        (pending,) = trace.open.values()
        assert pending.cpu == 2.0 and pending.scheduled is None
        assert trace.to_trace().duration.tolist() == [40.0]
        await wait_for(lambda: shared.recordings["default/web"].flushes >= 2)
        # written in batches, not once per pod event
        assert shared.recordings["default/web"].flushes < 20


async def test_the_trace_survives_a_restart_and_pods_that_ended_meanwhile_are_closed(
    api, core, run_operator, wait_for, recording_registry
):
    registry, _ = recording_registry
    await api.create(POLICIES, policy())
    async with run_operator(registry=registry):
        for name in ("a", "b"):
            body = await api.create(PODS.format("default"), pod(name, app="web"))
            t0 = datetime.fromisoformat(body["metadata"]["creationTimestamp"]).timestamp()
            await api.patch(PODS.format("default") + f"/{name}/status", scheduled(t0 + 1))
        await trace_when(core, lambda t: t.ran() == 2 and len(t.open) == 2, wait_for)
    # while the operator is down, pod a goes away and pod c comes
    await api.delete(PODS.format("default") + "/a")
    await api.create(PODS.format("default"), pod("c", app="web"))
    async with run_operator(registry=registry):
        trace = await trace_when(core, lambda t: len(t) == 3 and len(t.closed) == 1, wait_for)
        assert len(trace.open) == 2  # b (still running, not counted twice) and c (pending)


async def test_a_policy_without_pod_selector_records_nothing(
    api, core, run_operator, wait_for, recording_registry
):
    registry, shared = recording_registry
    spec = policy()["spec"]
    del spec["podSelector"]
    await api.create(POLICIES, policy(**spec) | {"spec": spec})
    async with run_operator(registry=registry):
        await api.create(PODS.format("default"), pod("web-1", app="web"))
        # the daemon is up (it registers a recording only when there is a selector) ...
        await api.patch(
            f"{POLICIES}/web", {"spec": {"podSelector": {"matchLabels": {"app": "web"}}}}
        )
        # ... and starts recording, existing pods included, once a selector is set
        trace = await trace_when(core, lambda t: len(t) == 1, wait_for)
        assert not trace.closed
    assert "default/web" not in shared.recordings


def test_pod_record_reads_the_times_a_scheduler_leaves():
    base = {
        "metadata": {"uid": "u", "creationTimestamp": iso(1000)},
        "spec": pod("x")["spec"] | {"nodeName": "n1"},
    }
    running = pod_record(base | scheduled(1003), deleted=False, now=1100)
    assert (running.scheduled, running.ended) == (1003, None)
    done = pod_record(base | finished(1050, "Failed"), deleted=False, now=1100)
    assert (done.scheduled, done.ended) == (1100, 1100)  # bound, no times recorded: now
    gone = pod_record(base | scheduled(1003), deleted=True, now=1200)
    assert gone.ended == 1200
    unbound = pod_record({"metadata": base["metadata"], "spec": pod("x")["spec"]}, False, 1100)
    assert unbound.scheduled is None and unbound.ended is None
    deleted_pending = pod_record({"metadata": base["metadata"], "spec": pod("x")["spec"]}, True, 1)
    assert deleted_pending.ended is None  # it never ran: no run time to record


def test_pods_selected_by_two_policies_are_tracked_until_they_are_not():
    from metapolicy.store import FilesystemStore
    from metapolicy_operator.recorder import Recording
    from metapolicy_operator.spec import WorkloadSource

    changed: list[set[str]] = []
    rec = Recorder()
    rec.on_shared_change = changed.append
    for key, labels in (("ns/a", {"app": "x"}), ("ns/b", {})):
        rec.recordings[key] = Recording(
            key, "default", {"matchLabels": labels}, ("default",), WorkloadSource(),
            FilesystemStore(f"/tmp/metapolicy-test-recorder-{key.replace('/', '-')}"),
        )  # fmt: skip
    one, two = pod("p1", app="x"), pod("p2", app="y")
    one["metadata"]["uid"], two["metadata"]["uid"] = "u1", "u2"
    rec.observe(one, deleted=False, now=1.0)
    rec.observe(two, deleted=False, now=1.0)
    assert rec.sharing("ns/a") == {"ns/b": 1} and rec.sharing("ns/b") == {"ns/a": 1}
    assert changed == [{"ns/a", "ns/b"}]
    rec.observe(one, deleted=True, now=2.0)
    assert rec.sharing("ns/a") == {} and changed[-1] == {"ns/a", "ns/b"}


async def test_a_failed_write_keeps_the_batch_for_the_next_flush(tmp_path):
    class Flaky(FilesystemStore):
        fail = True

        def save_trace(self, data: bytes) -> None:
            if self.fail:
                self.fail = False
                raise OSError("API server unavailable")
            super().save_trace(data)

    store = Flaky(tmp_path)
    recording = Recording("default/web", "default", {}, ("default",), WorkloadSource(), store)
    t0 = float(int(time.time())) - 60  # within the 7-day window the flush prunes to
    body = {"metadata": {"uid": "u1", "creationTimestamp": iso(t0)}, "spec": pod("x")["spec"]}
    recording.observe("u1", pod_record(body | scheduled(t0 + 1), deleted=False, now=t0 + 2))
    with pytest.raises(OSError, match="unavailable"):
        await _flush(recording)
    assert list(recording.pending) == ["u1"] and store.load_trace() is None
    await _flush(recording)
    assert not recording.pending
    assert ObservedTrace.decode(store.load_trace()).ran() == 1
