"""The alert rules: promtool checks them and runs their unit tests (alerts_test.yaml), and the
PrometheusRule in manifests/ carries exactly the plain rules file's groups.

`python tests/manifests/test_alerts.py` renders manifests/prometheusrule.yaml from
manifests/prometheus/rules.yaml (the one to edit).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
RULES = MANIFESTS / "prometheus" / "rules.yaml"
PROMETHEUS_RULE = MANIFESTS / "prometheusrule.yaml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")

HEADER = """\
# Generated from prometheus/rules.yaml by `python tests/manifests/test_alerts.py`: edit that
# file, not this one (tests/manifests/test_alerts.py checks that the two agree).
# The Prometheus Operator loads PrometheusRules that its Prometheus's ruleSelector matches
# (kube-prometheus-stack: the label `release: <its release name>`, see docs/deploy.md).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: metapolicy-operator
spec:
"""


def render_prometheus_rule(rules_text: str) -> str:
    """The rules file's `groups:` onwards, comments included, indented under `spec:`."""
    lines = rules_text.splitlines()
    start = lines.index("groups:")
    return HEADER + "".join(f"  {line}\n" if line else "\n" for line in lines[start:])


def promtool_run(promtool: str, *args: str) -> None:
    out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_checks_the_rules(promtool):
    promtool_run(promtool, "check", "rules", str(RULES))


def test_promtool_unit_tests(promtool):
    promtool_run(promtool, "test", "rules", str(UNIT_TESTS))


def test_prometheus_rule_carries_the_same_groups(rules):
    assert PROMETHEUS_RULE.read_text() == render_prometheus_rule(RULES.read_text()), (
        "manifests/prometheusrule.yaml is stale: run `python tests/manifests/test_alerts.py`"
    )
    assert yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"] == rules["groups"]


def test_the_alerts(alerts):
    assert {a["alert"] for a in alerts} == {
        "MetaPolicyRolledBack",
        "MetaPolicyRetentionLow",
        "MetaPolicyAdaptationFailing",
        "MetaPolicyStale",
        "MetaPolicyOperatorDown",
        "MetaPolicyServeFallbacksHigh",
        "MetaPolicyServerDown",
        "MetaPolicyServeCacheStale",
    }


def test_alerts_are_labelled_and_explained(alerts):
    for alert in alerts:
        name, notes = alert["alert"], alert["annotations"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook_url"} <= notes.keys(), name
        assert notes["runbook_url"].endswith("#" + name.lower()), name
        if "by (policy)" in alert["expr"]:  # a per-policy alert names its policy
            assert "$labels.policy" in notes["summary"], name
            assert "$labels.policy" in notes["description"], name


def test_every_alert_has_a_firing_and_a_quiet_case(alerts):
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for name in {a["alert"] for a in alerts}:
        outcomes = {bool(c["exp_alerts"]) for c in cases if c["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: needs a case where it fires and one where not"


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(render_prometheus_rule(RULES.read_text()))
    print(f"wrote {PROMETHEUS_RULE}")
