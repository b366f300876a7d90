"""The scheduler driver against the emulator process and a stand-in extender (tests only): it
binds pods where kube-scheduler with this extender would, and keeps scheduling when the
extender fails, as `ignorable: true` says. The real server replaces the stand-in in
test_serving.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import kubernetes
import pytest

from e2e.cluster import Kube, start_emulator
from e2e.extender import ExtenderConfig, shipped_extender
from e2e.nodes import SCENARIO_LABEL, Nodes
from e2e.scheduler import SCHEDULER_NAME, SchedulerDriver, scheduling
from e2e.wait import poll
from e2e.workload import WORKLOAD_LABEL, Task, WorkloadGenerator, draw_tasks, pod_manifest
from metapolicy.features import PodAttributes
from metapolicy.traces import SyntheticTasks
from metapolicy.workload import WorkloadSpec

pytestmark = pytest.mark.e2e

TIMEOUT = 30.0  # bound of every wait
_names = itertools.count()


@pytest.fixture(scope="module")
def kube(tmp_path_factory) -> Iterator[Kube]:
    emulator, kubeconfig = start_emulator(tmp_path_factory.mktemp("driver"))
    kube = Kube(kubeconfig, real=False)
    try:
        yield kube
    finally:
        kube.close()
        emulator.stop()


@pytest.fixture
def nodes(kube, request) -> Iterator[Nodes]:
    scenario = request.node.name.replace("_", "-")[:50]
    made = Nodes(kube, scenario)
    yield made
    for pod in kube.core.list_namespaced_pod("default").items:
        if (pod.spec.node_selector or {}).get(SCENARIO_LABEL) == scenario:
            kube.core.delete_namespaced_pod(pod.metadata.name, "default", grace_period_seconds=0)
    made.cleanup()


def config(url: str, **changes) -> ExtenderConfig:
    """The shipped extender entry, at the stand-in, with a timeout for a loaded machine."""
    return replace(shipped_extender().at(url), **({"http_timeout_s": 5.0} | changes))


def add_nodes(nodes: Nodes, count: int, cpu: str = "4", memory: str = "8Gi") -> list[str]:
    names = [f"{nodes.scenario[:30]}-{i}" for i in range(1, count + 1)]
    for name in names:
        nodes.add({"name": name, "cpu": cpu, "memory": memory})
    return names


def create_pod(kube: Kube, nodes: Nodes, cpu: float = 0.5, memory_mib: float = 512) -> str:
    name = f"drv-{next(_names):04d}"
    task = Task(0, 0.0, cpu, memory_mib, 10.0, PodAttributes(qos="Guaranteed"))
    body = pod_manifest(
        task, name, labels={"app": "drv"}, node_selector={SCENARIO_LABEL: nodes.scenario}
    )
    kube.core.create_namespaced_pod("default", body)
    return f"default/{name}"


def bound_decision(driver: SchedulerDriver, key: str, timeout: float = TIMEOUT):
    def find():
        return next((d for d in driver.decisions if d.pod == key and d.node), None)

    return poll(
        find,
        timeout,
        f"pod {key} to be bound",
        describe=lambda: f"decisions: {[d for d in driver.decisions if d.pod == key]}",
    )


def no_errors(driver: SchedulerDriver) -> None:
    assert driver.errors == [] and driver.kubelet.errors == []
    assert driver.pods.errors == [] and driver.nodes.errors == []


def test_pods_go_to_the_extenders_top_choice(kube, nodes, stand_in):
    names = add_nodes(nodes, 3)
    stand_in.favourite = names[-1]  # the default rule would spread; the extender packs
    with scheduling(kube, config(stand_in.url)) as driver:
        keys = [create_pod(kube, nodes) for _ in range(5)]
        decisions = [bound_decision(driver, key) for key in keys]
        assert [d.node for d in decisions] == [names[-1]] * 5
        assert all(d.extender_decided and d.followed_extender for d in decisions)
        assert {d.default_choice for d in decisions[1:]} <= set(names[:2])  # emptier nodes
        for d in decisions:  # default + Score x 20 x 10
            assert d.totals[names[-1]] == d.default_scores[names[-1]] + 10 * 200
        # Bound through the API, then started by the kubelet.
        for d in decisions:
            pod = kube.core.read_namespaced_pod(d.pod.split("/")[1], "default")
            assert pod.spec.node_name == d.node

        def running() -> bool:
            pods = [kube.core.read_namespaced_pod(k.split("/")[1], "default") for k in keys]
            return all(p.status.phase == "Running" and p.status.start_time for p in pods)

        poll(running, TIMEOUT, "the kubelet to start every bound pod")
        no_errors(driver)
    # kube-scheduler's calls: filter then prioritize, with the pod as the API served it.
    assert stand_in.verbs() == ["filter", "prioritize"] * 5
    for verb, body in stand_in.requests:
        pod = body["Pod"]
        assert pod["kind"] == "Pod" and pod["metadata"]["uid"]
        assert "nodeName" not in pod["spec"]  # still Pending (the emulator sets no status)
        assert pod.get("status", {}).get("phase", "Pending") == "Pending"
        assert pod["spec"]["schedulerName"] == SCHEDULER_NAME
        assert body["Nodes"] is None and sorted(body["NodeNames"]) == names, verb


def test_an_extender_that_is_down_is_skipped_and_every_pod_still_bound(kube, nodes, stand_in):
    add_nodes(nodes, 3)
    url = stand_in.url
    stand_in.stop()
    with scheduling(kube, config(url)) as driver:
        decisions = [bound_decision(driver, create_pod(kube, nodes)) for _ in range(4)]
        no_errors(driver)
    for d in decisions:
        assert d.filter_error and d.prioritize_error and d.extender_scores is None
        best = max(d.default_scores.values())
        assert d.default_scores[d.node] == best  # the default rule alone decided


def test_a_hanging_extender_times_out_and_is_skipped(kube, nodes, stand_in):
    add_nodes(nodes, 2)
    stand_in.mode = "hang"
    with scheduling(kube, config(stand_in.url, http_timeout_s=0.3)) as driver:
        decision = bound_decision(driver, create_pod(kube, nodes))
        stand_in.release.set()
        no_errors(driver)
    assert decision.filter_error and decision.prioritize_error


def test_without_ignorable_a_failing_filter_holds_the_pod_until_it_recovers(kube, nodes, stand_in):
    add_nodes(nodes, 2)
    stand_in.mode = "error"
    with scheduling(kube, config(stand_in.url, ignorable=False)) as driver:
        key = create_pod(kube, nodes)
        poll(
            lambda: any(d.pod == key and d.reason for d in driver.decisions),
            TIMEOUT,
            "a failed attempt",
        )
        assert key in driver.pending()
        stand_in.mode = "ok"
        nodes.add({"name": f"{nodes.scenario[:30]}-late", "cpu": "4", "memory": "8Gi"})
        decision = bound_decision(driver, key)
        no_errors(driver)
    failed = [d for d in driver.decisions if d.pod == key and d.node is None]
    assert failed and all(d.reason == "extender filter failed" for d in failed)
    assert decision.filter_error is None


def test_with_one_node_left_after_the_filter_nothing_is_prioritized(kube, nodes, stand_in):
    names = add_nodes(nodes, 3)
    stand_in.keep = lambda name: name == names[0]
    with scheduling(kube, config(stand_in.url)) as driver:
        decision = bound_decision(driver, create_pod(kube, nodes))
        no_errors(driver)
    assert decision.node == names[0] and decision.feasible == (names[0],)
    assert stand_in.verbs() == ["filter"]


def test_a_pod_that_fits_nowhere_waits_until_a_node_joins(kube, nodes, stand_in):
    add_nodes(nodes, 2, cpu="1", memory="2Gi")
    with scheduling(kube, config(stand_in.url)) as driver:
        key = create_pod(kube, nodes, cpu=3.0, memory_mib=1024)
        poll(
            lambda: any(d.pod == key and d.reason == "no node fits" for d in driver.decisions),
            TIMEOUT,
            "a failed attempt",
        )
        nodes.add({"name": f"{nodes.scenario[:30]}-big", "cpu": "8", "memory": "16Gi"})
        decision = bound_decision(driver, key)
        no_errors(driver)
    assert decision.node.endswith("-big")


def test_cordoned_tainted_and_not_ready_nodes_are_not_candidates(kube, nodes, stand_in):
    names = add_nodes(nodes, 4)
    nodes.cordon(names[0])
    nodes.taint(names[1], "cluster-autoscaler")
    nodes.set_ready(names[2], False)
    with scheduling(kube, config(stand_in.url)) as driver:
        decision = bound_decision(driver, create_pod(kube, nodes))
        no_errors(driver)
    assert decision.candidates == (names[3],) and decision.node == names[3]


def test_a_workload_stream_is_created_scheduled_and_finished(kube, nodes, stand_in):
    add_nodes(nodes, 3, cpu="8", memory="32Gi")
    tasks = draw_tasks(SyntheticTasks(WorkloadSpec(load=0.5)), seed=1, capacity_cpu=24, limit=16)
    with scheduling(kube, config(stand_in.url)) as driver:
        generator = WorkloadGenerator(
            kube,
            tasks,
            name="wl-drv",
            labels={"app": "edge"},
            compression=20.0,
            finish="succeed",
            node_selector={SCENARIO_LABEL: nodes.scenario},
        ).start()
        try:
            poll(
                generator.done,
                120,
                "every task's pod to be created, run and finish",
                describe=lambda: (
                    f"{len(generator.created)} created, "
                    f"{len(generator.started)} started, {len(generator.finished)} finished"
                ),
            )
        finally:
            generator.stop()
        no_errors(driver)
    assert generator.errors == []
    bound = {d.pod for d in driver.bound()}
    assert bound == set(generator.created) and len(bound) == 16
    assert sum(t.pods for t in driver.counterfactual.placed.values()) == 16
    left = kube.core.list_namespaced_pod("default", label_selector=f"{WORKLOAD_LABEL}=wl-drv")
    assert left.items == []


def test_binding_a_pod_twice_is_refused(kube, nodes):
    add_nodes(nodes, 1)
    key = create_pod(kube, nodes)
    name = key.split("/")[1]
    body = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": f"{nodes.scenario[:30]}-1"},
    }
    kube.core.create_namespaced_pod_binding(name, "default", body, _preload_content=False)
    with pytest.raises(kubernetes.client.ApiException) as again:
        kube.core.create_namespaced_pod_binding(name, "default", body, _preload_content=False)
    assert again.value.status == 409
