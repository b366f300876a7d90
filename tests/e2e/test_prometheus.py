"""The operator's and the placement server's metrics as Prometheus sees them: a real Prometheus
scrapes `metapolicy run` and `metapolicy serve` while a short scenario runs (training, a
promoted adaptation, a rollback drill) and the scheduler driver places a few pods through the
server (in active, then shadow mode); then the Grafana dashboard's and the alert rules'
expressions must find the series they are written against.

A renamed metric or label, a typo in a selector, or a rule Prometheus refuses to load fails
here instead of as an empty panel or an alert that can never fire.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.autoscaler import GROUP, PLURAL, VERSION, Autoscaler, Scenario
from e2e.cluster import Environment
from e2e.extender import shipped_extender
from e2e.nodes import SCENARIO_LABEL
from e2e.prometheus import (
    RULES,
    SERVE_JOB,
    Prometheus,
    binary,
    check_metrics,
    prometheus,
    wait_for_result,
)
from e2e.scheduler import scheduling
from e2e.serve import Server
from e2e.wait import poll
from e2e.workload import Task, pod_manifest
from metapolicy.features import PodAttributes

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        binary("prometheus") is None or binary("promtool") is None,
        reason="prometheus and promtool are not installed",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "manifests" / "grafana" / "metapolicy-dashboard.json"
NAME = "e2e-prom"
BAD = "e2e-prom-invalid"
POLICY = f"default/{NAME}"  # the `policy` label: namespace/name
QUERY_TIMEOUT = 20.0  # scrapes and rule evaluations are 1 s apart; rate() needs two samples

# Tiny budgets: e2e checks the operator and its metrics, not the ML.
SPEC = {
    "podSelector": {"matchLabels": {"app": NAME}},
    "hiddenSize": 16,
    "training": {"budgetSteps": 2048},
    "adaptation": {"budgetSteps": 512, "settleSeconds": 2},
    "validation": {"episodes": 4, "minRetention": 0.5, "onInconclusive": "promote"},
    "workload": {"episodeTasks": 32},
}
SCENARIO = Scenario(
    name="prometheus",
    description="training, one node added (promoted), a rollback drill (rolled back)",
    timeout=120,
    steps=[
        # An invalid policy first (so the later steps act on NAME): a reconcile error, counted
        # in metapolicy_reconcile_errors_total. A real API server rejects it at admission.
        {"apply-policy": {"name": BAD, "invalid": True, "spec": {"architecture": "transformer"}}},
        {"expect": {"policy": BAD, "phase": "Failed"}},
        {"apply-policy": {"name": NAME, "spec": SPEC}},
        {"expect": {"phase": "Pending"}},
        {
            "add": [
                {"name": "p-1", "cpu": "16", "memory": "64Gi", "latencyMs": 2},
                {"name": "p-2", "cpu": "8", "memory": "32Gi", "latencyMs": 10},
                {"name": "p-3", "cpu": "2", "memory": "8Gi", "latencyMs": 30},
            ]
        },
        {"expect": {"phase": "Ready", "historyLength": 1, "activeVersion": 1}},
        {"add": [{"name": "p-4", "cpu": "8", "memory": "16Gi", "latencyMs": 6}]},
        # Adapted and quiet (serving first and fine-tuning after, the adaptation may leave one
        # or two history records): then the drill, which must be rolled back.
        {
            "expect": {
                "phase": "Ready",
                "nodes": ["p-1", "p-2", "p-3", "p-4"],
                "conditions": {"Adapting": "False"},
            }
        },
        {"annotate-policy": {"request": {"drill": True, "reason": "x"}}},
        {"expect": {"phase": "Ready", "lastDrill": True, "lastOutcome": "rolled_back"}},
    ],
)

# Dashboard panels whose series only exist after an invalid spec was reconciled; exempt when a
# real API server rejected the invalid policy at admission (no reconcile error to count).
NEEDS_RECONCILE_ERROR = {"Reconcile errors in the past hour by reason"}

# How each alert rule is checked, by (alert, cause label). A rule missing here fails the test.
#   "stripped": the expression without its threshold comparison returns this policy's series
#               (the metrics and labels it is written against exist);
#   "firing":   as "stripped", and the full expression returns this policy too (the drill's
#               rollback must trip it);
#   "data":     the expression without its threshold returns something (not per policy);
#   "empty":    the full expression returns nothing while the processes are up and healthy.
RULE_CHECKS = {
    ("MetaPolicyRolledBack", ""): "firing",  # one rollback (the drill) in the last 15 min
    ("MetaPolicyRetentionLow", ""): "stripped",
    ("MetaPolicyAdaptationFailing", "repeated_rollbacks"): "stripped",  # 1 < 3 rollbacks
    ("MetaPolicyAdaptationFailing", "stuck_rolled_back"): "stripped",  # drill ends Ready
    ("MetaPolicyStale", ""): "stripped",
    ("MetaPolicyOperatorDown", ""): "empty",  # absent(up == 1): empty while scraped and up
    ("MetaPolicyServeFallbacksHigh", ""): "data",  # fallback / (policy + fallback) answers
    ("MetaPolicyServerDown", ""): "empty",
    ("MetaPolicyServeCacheStale", ""): "data",
}
PLACED = 3  # pods the policy places through the server, then SHADOWED in shadow mode
SHADOWED = 2

_THRESHOLD = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.]+(?:e-?[0-9]+)?\s*$")
_GRAFANA_INTERVALS = re.compile(
    r"\$__(?:rate_interval|interval|range)\b|\$\{__(?:rate_interval|interval|range)\}"
)


def strip_threshold(expr: str) -> str:
    stripped = _THRESHOLD.sub("", expr.strip())
    assert stripped != expr.strip(), f"no threshold comparison to strip in {expr!r}"
    return stripped


def dashboard_expressions(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, expr) of every target, with Grafana's variables substituted."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels") or [])

    found = []
    for panel in panels(json.loads(path.read_text())["panels"]):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                expr = target["expr"].replace("${policy}", POLICY).replace("$policy", POLICY)
                expr = _GRAFANA_INTERVALS.sub("1m", expr)
                assert "$" not in expr, f"unsubstituted variable in {panel.get('title')}: {expr}"
                found.append((panel.get("title", "?"), expr))
    assert found, f"no expressions in {path}"
    return found


def rule_definitions(path: Path = RULES) -> list[tuple[str, dict[str, Any]]]:
    return [
        (group["name"], rule)
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def _policies(result: list[dict[str, Any]]) -> set[str]:
    return {sample["metric"].get("policy", "") for sample in result}


@pytest.fixture(scope="module")
def serve(e2e_env: Environment) -> Iterator[Server]:
    server = Server(e2e_env.kube.kubeconfig, e2e_env.workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prom(e2e_env: Environment, serve: Server) -> Iterator[Prometheus]:
    assert e2e_env.operator.metrics_url is not None and serve.metrics_url is not None
    with prometheus(
        e2e_env.operator.metrics_url,
        e2e_env.workdir / "prometheus",
        also={SERVE_JOB: serve.metrics_url},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def player(e2e_env: Environment, prom: Prometheus, serve: Server) -> Iterator[Autoscaler]:
    """The scenario played once for the module, Prometheus scraping all along; then pods
    placed through the server, in active and in shadow mode."""
    player = Autoscaler(e2e_env.kube, SCENARIO, operator=e2e_env.operator)
    try:
        player.play()
        process = e2e_env.operator.process
        assert process is not None and process.running(), e2e_env.operator.log_tail()
        place_pods(e2e_env, serve)
        # The scrape targets are up before anything is checked against Prometheus.
        for job in ("metapolicy-operator", SERVE_JOB):
            wait_for_result(prom, f'up{{job="{job}"}} == 1', QUERY_TIMEOUT,
                            f"the {job} scrape target to be up")  # fmt: skip
        yield player
    finally:
        player.cleanup()


def place_pods(env: Environment, serve: Server) -> None:
    """PLACED pods through the server in active mode, then SHADOWED in shadow mode."""
    extender = replace(shipped_extender().at(serve.url), http_timeout_s=5.0)
    with scheduling(env.kube, extender) as driver:
        for mode, count in (("active", PLACED), ("shadow", SHADOWED)):
            if mode == "shadow":
                patch = {"spec": {"serving": {"mode": "shadow"}}}
                env.kube.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, "default", PLURAL, NAME, patch
                )
            for i in range(count):
                name = f"prom-{mode}-{i}"
                task = Task(i, 0.0, 0.25, 256, 60.0, PodAttributes())
                body = pod_manifest(task, name, labels={"app": NAME},
                                    node_selector={SCENARIO_LABEL: SCENARIO.name})  # fmt: skip
                env.kube.core.create_namespaced_pod("default", body)
                key = f"default/{name}"
                poll(lambda k=key: any(d.pod == k and d.node for d in driver.decisions),
                     QUERY_TIMEOUT, f"pod {key} to be bound")  # fmt: skip
            poll(lambda m=mode, c=count: decided(serve, m) >= c, QUERY_TIMEOUT,
                 f"{count} {mode} decisions")  # fmt: skip
        assert driver.errors == []
    poll(lambda: serve.metric("metapolicy_shadow_bound_total", policy=POLICY) >= SHADOWED,
         QUERY_TIMEOUT, "the shadow pods' bindings to be counted")  # fmt: skip


def decided(serve: Server, mode: str) -> float:
    return serve.metric("metapolicy_serve_decisions_total", policy=POLICY, mode=mode)


@pytest.fixture
def played(player: Autoscaler, prom: Prometheus) -> Prometheus:
    return prom


@pytest.mark.parametrize("process", ["operator", "serve"])
def test_promtool_accepts_the_live_metrics(
    played: Prometheus, e2e_env: Environment, serve: Server, process: str
):
    url = e2e_env.operator.metrics_url if process == "operator" else serve.metrics_url
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    assert f'policy="{POLICY}"' in text
    result = check_metrics(text)
    assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}"


def test_prometheus_loaded_every_rule_without_errors(played: Prometheus):
    defined = rule_definitions()
    want = {(group, rule["alert"], rule["expr"].strip()) for group, rule in defined}
    seen: list[Any] = []

    def all_loaded_and_evaluated() -> bool:
        groups = played.rules()
        seen[:] = [groups]
        loaded = {
            (group["name"], rule["name"], rule["query"])
            for group in groups
            for rule in group["rules"]
        }
        names = {(g, a) for g, a, _ in want}
        if {(g, a) for g, a, _ in loaded} != names or len(loaded) < len(want):
            return False
        return all(rule["health"] == "ok" for group in groups for rule in group["rules"])

    deadline = time.monotonic() + QUERY_TIMEOUT
    while not all_loaded_and_evaluated():
        assert time.monotonic() < deadline, f"rules not all loaded and healthy: {seen}"
        time.sleep(0.5)
    groups = seen[0]
    assert [g["name"] for g in groups] == list(dict.fromkeys(g for g, _ in defined))
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(defined)
    for rule in rules:
        assert rule["type"] == "alerting" and not rule.get("lastError"), rule


def test_every_rule_has_a_check():
    keys = [(rule["alert"], (rule.get("labels") or {}).get("cause", "")) for _, rule in
            rule_definitions()]  # fmt: skip
    assert len(keys) == len(set(keys)), "two rules share an alert name and cause"
    assert set(keys) == set(RULE_CHECKS), (
        "add every alert rule to RULE_CHECKS (and drop removed ones): "
        f"missing {set(keys) - set(RULE_CHECKS)}, stale {set(RULE_CHECKS) - set(keys)}"
    )


@pytest.mark.parametrize("key", sorted(RULE_CHECKS), ids=lambda key: "/".join(filter(None, key)))
def test_alert_expression_finds_its_series(played: Prometheus, key: tuple[str, str]):
    rules = {
        (rule["alert"], (rule.get("labels") or {}).get("cause", "")): rule
        for _, rule in rule_definitions()
    }
    assert key in rules, f"{key} is in RULE_CHECKS but not in {RULES.name}"
    expr, how = rules[key]["expr"].strip(), RULE_CHECKS[key]
    if how == "empty":
        # Healthy means empty; wait for the targets to be scraped twice so `up` is settled.
        for job in ("metapolicy-operator", SERVE_JOB):
            wait_for_result(played, f'count_over_time(up{{job="{job}"}}[1m]) >= 2',
                            QUERY_TIMEOUT)  # fmt: skip
        assert played.query(expr) == [], f"{key}: {expr} should be empty while all are up"
        return
    stripped = strip_threshold(expr)
    result = wait_for_result(played, stripped, QUERY_TIMEOUT, f"{key}: a result of {stripped}")
    if how == "data":
        return
    assert POLICY in _policies(result), f"{key}: no series for {POLICY} in {result}"
    if how == "firing":
        result = wait_for_result(played, expr, QUERY_TIMEOUT, f"{key} to fire: {expr}")
        assert POLICY in _policies(result), f"{key}: does not fire for {POLICY}: {result}"


@pytest.mark.parametrize(
    ("title", "expr"), dashboard_expressions(), ids=[t for t, _ in dashboard_expressions()]
)
def test_dashboard_expression_returns_data(
    played: Prometheus, player: Autoscaler, title: str, expr: str
):
    if title in NEEDS_RECONCILE_ERROR and BAD in player.rejected:
        pytest.skip("the API server rejected the invalid policy: no reconcile error to count")
    result = wait_for_result(played, expr, QUERY_TIMEOUT, f"panel {title!r}: a result of {expr}")
    if f'"{POLICY}"' in expr:
        assert _policies(result) & {POLICY, ""}, f"panel {title!r}: {result}"
