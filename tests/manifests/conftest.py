"""Shared fixtures for the deployment manifests, the alert rules and the Grafana dashboard."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from metapolicy_operator.metrics import Metrics
from metapolicy_operator.serving.metrics import ServeMetrics

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"

#: Grafana's interval variables, replaced by a duration before parsing. `"$policy"` stays:
#: it only appears inside a regex matcher's string, which PromQL accepts as it is.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "1m"}


@pytest.fixture(scope="session")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())


@pytest.fixture(scope="session")
def objects(kustomization) -> list[dict[str, Any]]:
    """Every object of every file the kustomization lists (before kustomize transforms)."""
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
    return docs


@pytest.fixture(scope="session")
def by_kind(objects):
    def find(kind: str) -> list[dict[str, Any]]:
        return [o for o in objects if o["kind"] == kind]

    return find


@pytest.fixture(scope="session")
def by_name(objects):
    def find(kind: str, name: str) -> dict[str, Any]:
        (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
        return found

    return find


@pytest.fixture(scope="session")
def deployment(by_name) -> dict[str, Any]:
    """The operator's Deployment."""
    return by_name("Deployment", "metapolicy-operator")


@pytest.fixture(scope="session")
def serve_deployment(by_name) -> dict[str, Any]:
    """The placement server's Deployment (`metapolicy serve`)."""
    return by_name("Deployment", "metapolicy-serve")


@pytest.fixture(scope="session")
def scheduler_objects() -> list[dict[str, Any]]:
    """Every object of manifests/scheduler/ (the second kube-scheduler profile)."""
    base = MANIFESTS / "scheduler"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((base / name).read_text()) if d]
    return docs


@pytest.fixture(scope="session")
def rules() -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / "prometheus" / "rules.yaml").read_text())


@pytest.fixture(scope="session")
def alerts(rules) -> list[dict[str, Any]]:
    return [r for group in rules["groups"] for r in group["rules"] if "alert" in r]


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    return json.loads((MANIFESTS / "grafana" / "metapolicy-dashboard.json").read_text())


@pytest.fixture(scope="session")
def panels(dashboard) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


@pytest.fixture(scope="session")
def dashboard_expressions(panels) -> dict[str, str]:
    """Each panel query, by panel and refId, with Grafana's interval variables replaced."""
    found = {}
    for p in panels:
        for t in p["targets"]:
            expr = t["expr"]
            for variable, duration in GRAFANA_INTERVALS.items():
                expr = expr.replace(variable, duration)
            assert "$" not in expr.replace('"$policy"', ""), f"{p['title']!r}: unknown variable"
            found[f"panel {p['title']!r} {t['refId']}"] = expr
    return found


@pytest.fixture(scope="session")
def expressions(rules, dashboard_expressions) -> dict[str, str]:
    """Every PromQL expression of the rules and the dashboard, by where it is."""
    found = {
        f"rule {r.get('alert') or r.get('record')} #{i}": r["expr"]
        for group in rules["groups"]
        for i, r in enumerate(group["rules"])
    }
    return found | dashboard_expressions


@pytest.fixture(scope="session")
def exposed() -> dict[str, tuple[str, ...]]:
    """Every series name the operator and the placement server export -> its label names,
    from their own registries."""
    names = {}
    for metrics in (Metrics(), ServeMetrics()):
        labels = {
            m._name: tuple(m._labelnames)  # prometheus-client has no public getter for these
            for m in vars(metrics).values()
            if isinstance(m, MetricWrapperBase)
        }
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        for family in metrics.registry.collect():
            for suffix in suffixes.get(family.type, ("",)):
                extra = ("le",) if suffix == "_bucket" else ()
                names[family.name + suffix] = labels[family.name] + extra
    return names


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):  # CI installs it: a silent skip there would hide the alerts
            pytest.fail("promtool missing in CI: .ci/run must `apt-get install prometheus`")
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    return path
