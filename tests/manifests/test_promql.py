"""Every PromQL expression of the alert rules and the Grafana dashboard parses, and asks only
for series the operator exports (read from its own registry, metrics.Metrics)."""

from __future__ import annotations

import subprocess

import promql_parser
import yaml

#: Series Prometheus adds itself; every other name must come from the operator.
SYNTHETIC_METRICS = {"up"}


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_prometheus_parses_every_expression(promtool, expressions, tmp_path):
    """promtool parses rule files only, so each expression becomes a recording rule."""
    exprs = expressions.values()
    rules = [{"record": f"check:expression_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "expressions.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "expressions", "rules": rules}]}))
    out = subprocess.run(
        [promtool, "check", "rules", "--lint=none", str(path)], capture_output=True, text=True
    )
    index = "\n".join(f"expression_{i}: {where}" for i, where in enumerate(expressions))
    assert out.returncode == 0, out.stdout + out.stderr + index


def test_expressions_use_only_exported_series(expressions, exposed):
    known = exposed.keys() | SYNTHETIC_METRICS
    for where, expr in expressions.items():
        names = {s.name for s in selectors(expr)}
        assert None not in names, f"{where}: a selector without a metric name"
        assert names <= known, f"{where}: unknown series {names - known}"


def test_dashboard_filters_per_policy_series_by_the_policy_variable(dashboard_expressions, exposed):
    for where, expr in dashboard_expressions.items():
        for selector in selectors(expr):
            if "policy" in exposed.get(selector.name, ()):
                matchers = {(m.name, m.value) for m in selector.matchers.matchers}
                assert ("policy", "$policy") in matchers, f"{where}: {selector.name} unfiltered"


def test_dashboard_shows_every_exported_metric(dashboard_expressions, exposed):
    def family(name: str) -> str:
        return name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")

    shown = {family(s.name) for e in dashboard_expressions.values() for s in selectors(e)}
    missing = {family(name) for name in exposed} - shown
    assert not missing, f"not on the dashboard: {missing}"
