"""The whole loop as processes: the emulator, `metapolicy run`, `metapolicy serve`, and the
scheduler driver playing kube-scheduler with the shipped extender configuration.

In order, on one trained policy: pods are placed by the active version (its choice wins);
shadow mode answers neutral scores and counts agreement from the later bindings; a promotion
is hot-swapped while pods keep coming, with no failed request; with the operator killed the
server keeps scoring; with the server killed every pod is still scheduled (ignorable), and
once it is back the policy places pods again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import pytest

from e2e.autoscaler import GROUP, PLURAL, VERSION, Autoscaler, Scenario
from e2e.cluster import Environment
from e2e.extender import ExtenderClient, ExtenderConfig, shipped_extender
from e2e.nodes import SCENARIO_LABEL
from e2e.scheduler import Decision, SchedulerDriver, scheduling
from e2e.serve import Server
from e2e.wait import poll
from e2e.workload import Task, pod_manifest
from metapolicy.features import PodAttributes

pytestmark = pytest.mark.e2e

NAME = "e2e-serve"
POLICY = f"default/{NAME}"
APP = {"app": NAME}  # the policy's podSelector
TIMEOUT = 60.0
SPEC = {  # tiny budgets: e2e checks the loop, not the ML
    "podSelector": {"matchLabels": APP},
    "hiddenSize": 16,
    "training": {"budgetSteps": 2048},
    "adaptation": {"budgetSteps": 512, "settleSeconds": 2},
    "validation": {"episodes": 4, "minRetention": 0.5, "onInconclusive": "promote"},
    "workload": {"episodeTasks": 32},
}
NODES = [
    {"name": "sv-1", "cpu": "16", "memory": "64Gi", "latencyMs": 2},
    {"name": "sv-2", "cpu": "8", "memory": "32Gi", "latencyMs": 10},
    {"name": "sv-3", "cpu": "4", "memory": "16Gi", "latencyMs": 30},
]
SCENARIO = Scenario(
    name="serving",
    timeout=180,
    steps=[
        {"apply-policy": {"name": NAME, "spec": SPEC}},
        {"add": NODES},
        {"expect": {"phase": "Ready", "historyLength": 1, "activeVersion": 1}},
    ],
)
_pods = itertools.count()


@pytest.fixture(scope="module")
def server(e2e_env: Environment) -> Iterator[Server]:
    server = Server(e2e_env.kube.kubeconfig, e2e_env.workdir)
    server.start()
    yield server
    code = server.stop()
    assert code == 0, f"metapolicy serve exited with {code} on SIGTERM:\n{server.log_tail()}"


@pytest.fixture(scope="module")
def player(e2e_env: Environment, server: Server) -> Iterator[Autoscaler]:
    player = Autoscaler(e2e_env.kube, SCENARIO, operator=e2e_env.operator)
    try:
        player.play()
        yield player
    finally:
        player.cleanup()


@pytest.fixture(scope="module")
def extender(server: Server) -> ExtenderConfig:
    """The shipped extender entry at the server, with a timeout for a loaded 2-core machine
    (100 ms is right for a real cluster, not for four Python processes sharing two cores)."""
    return replace(shipped_extender().at(server.url), http_timeout_s=5.0)


@pytest.fixture(scope="module")
def driver(e2e_env: Environment, extender: ExtenderConfig, player) -> Iterator[SchedulerDriver]:
    with scheduling(e2e_env.kube, extender) as driver:
        yield driver
        assert driver.errors == [] and driver.kubelet.errors == []


def create_pod(env: Environment, cpu: float = 0.5) -> str:
    name = f"sv-{next(_pods):04d}"
    task = Task(0, 0.0, cpu, 512, 30.0, PodAttributes(qos="Guaranteed", owner="service"))
    body = pod_manifest(task, name, labels=APP, node_selector={SCENARIO_LABEL: "serving"})
    env.kube.core.create_namespaced_pod("default", body)
    return f"default/{name}"


def place(env: Environment, driver: SchedulerDriver, count: int) -> list[Decision]:
    """Create pods one at a time, each bound before the next: the decisions."""
    return [bound(driver, create_pod(env)) for _ in range(count)]


def bound(driver: SchedulerDriver, key: str) -> Decision:
    def found() -> Decision | None:
        return next((d for d in driver.decisions if d.pod == key and d.node), None)

    return poll(found, TIMEOUT, f"pod {key} to be bound", describe=lambda: str(driver.pending()))


def served_version(server: Server, version: int) -> None:
    poll(lambda: server.metric("metapolicy_served_version", policy=POLICY) == version,
         TIMEOUT, f"the server to serve version {version}", describe=server.log_tail)  # fmt: skip


def outcome_for_a_probe(extender: ExtenderConfig, env: Environment) -> str | None:
    """The outcome the server names for a pod of the policy, asked directly."""
    task = Task(0, 0.0, 0.1, 128, 1.0, PodAttributes())
    pod = pod_manifest(task, "probe", labels=APP)
    pod["metadata"] |= {"namespace": "default", "uid": "probe"}
    client = ExtenderClient(extender)
    client.prioritize(pod, [{"metadata": {"name": n["name"]}} for n in NODES])
    return {k.lower(): v for k, v in client.headers.items()}.get("x-metapolicy-outcome")


def set_mode(env: Environment, extender: ExtenderConfig, mode: str, outcome: str) -> None:
    patch = {"spec": {"serving": {"mode": mode}}}
    env.kube.custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, NAME, patch)
    poll(lambda: outcome_for_a_probe(extender, env) == outcome, TIMEOUT,
         f"the server to answer {outcome!r} in mode {mode}")  # fmt: skip


def clean(decision: Decision) -> bool:
    return decision.filter_error is None and decision.prioritize_error is None


def test_pods_are_placed_by_the_active_version(e2e_env, server, player, driver):
    served_version(server, 1)
    before = server.metric("metapolicy_serve_decisions_total", policy=POLICY, mode="active")
    decisions = place(e2e_env, driver, 6)
    for d in decisions:
        assert clean(d) and (d.outcome, d.version) == ("policy", 1), d
        assert d.extender_decided and d.followed_extender, d  # the policy's choice won
        assert d.extender_scores[d.node] == 10
    after = server.metric("metapolicy_serve_decisions_total", policy=POLICY, mode="active")
    assert after - before == 6
    assert server.metric("metapolicy_serve_requests_total", outcome="bad_request") == 0


def test_shadow_mode_answers_neutral_scores_and_counts_agreement(
    e2e_env, server, player, driver, extender
):
    bound_before = server.metric("metapolicy_shadow_bound_total", policy=POLICY)
    set_mode(e2e_env, extender, "shadow", "shadow")
    try:
        decisions = place(e2e_env, driver, 5)
        for d in decisions:
            assert clean(d) and d.outcome == "shadow", d
            assert not d.extender_decided  # neutral: the default rule decided
            assert d.default_scores[d.node] == max(d.default_scores.values())

        def counted() -> bool:
            seen = server.metric("metapolicy_shadow_bound_total", policy=POLICY)
            return seen - bound_before >= 5

        poll(counted, TIMEOUT, "the server to see the shadow pods bound")
        agreed = server.metric("metapolicy_shadow_agreements_total", policy=POLICY)
        assert 0 <= agreed <= server.metric("metapolicy_shadow_bound_total", policy=POLICY)
        assert server.metric("metapolicy_serve_decisions_total", policy=POLICY, mode="shadow") >= 5
    finally:
        set_mode(e2e_env, extender, "active", "policy")


def test_a_promotion_is_hot_swapped_with_no_failed_request(e2e_env, server, player, driver):
    fallbacks = server.metric("metapolicy_serve_requests_total", outcome="fallback")
    player.nodes.add({"name": "sv-4", "cpu": "8", "memory": "32Gi", "latencyMs": 5})
    decisions: list[Decision] = []

    def swapped() -> bool:  # pods keep coming, one at a time, until a new version serves
        decisions.append(bound(driver, create_pod(e2e_env)))
        return (decisions[-1].version or 0) > 1

    poll(swapped, 240, "a promoted version to place a pod", interval=0.0,
         describe=lambda: f"versions so far {[d.version for d in decisions]}")  # fmt: skip

    def settled() -> int | None:  # the adaptation done (a fine-tune may promote once more)
        status = player.status(NAME)
        active = status.get("activeVersion")
        ready = status.get("phase") == "Ready" and status.get("eligibleNodes") == 4
        served = server.metric("metapolicy_served_version", policy=POLICY)
        return active if ready and served == active else None

    active = poll(settled, 240, "the policy to settle on 4 nodes, served")
    decisions += place(e2e_env, driver, 3)
    versions = [d.version for d in decisions]
    assert versions == sorted(versions), versions  # never back to an older version
    assert versions[0] == 1 and versions[-1] == active > 1, versions
    for d in decisions:
        assert clean(d) and d.outcome == "policy", d  # every request answered by a policy
    assert server.metric("metapolicy_serve_requests_total", outcome="fallback") == fallbacks


def test_the_server_keeps_scoring_while_the_operator_is_down(e2e_env, server, player, driver):
    version = player.status(NAME)["activeVersion"]
    e2e_env.operator.kill()
    try:
        for d in place(e2e_env, driver, 4):
            assert clean(d) and (d.outcome, d.version) == ("policy", version), d
            assert d.followed_extender
    finally:
        e2e_env.operator.start()


def test_a_killed_server_leaves_every_pod_scheduled(e2e_env, server, player, driver):
    server.kill()
    try:
        for d in place(e2e_env, driver, 4):  # ignorable: skipped, the default rule decides
            assert d.filter_error and d.prioritize_error and d.extender_scores is None, d
            assert d.default_scores[d.node] == max(d.default_scores.values())
    finally:
        server.start()
    version = player.status(NAME)["activeVersion"]
    served_version(server, version)  # read back from the store at start
    for d in place(e2e_env, driver, 2):
        assert clean(d) and (d.outcome, d.version) == ("policy", version), d
