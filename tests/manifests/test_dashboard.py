"""The Grafana dashboard (manifests/grafana/metapolicy-dashboard.json): valid JSON that Grafana's
sidecar can load as is, every query on the `${DS_PROMETHEUS}` data source variable, and a
`policy` variable listing the operator's policies. Its PromQL is checked in test_promql.py."""

from __future__ import annotations

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def test_dashboard_identity(dashboard):
    assert dashboard["uid"] == "metapolicy-operator" and dashboard["title"] == "MetaPolicy"
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_query_uses_the_datasource_variable(panels):
    assert panels
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"DS_PROMETHEUS", "policy"}
    source = variables["DS_PROMETHEUS"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    policy = variables["policy"]
    assert policy["datasource"] == DATASOURCE
    assert policy["query"]["query"] == "label_values(metapolicy_eligible_nodes, policy)"
    # "All" must be a regex for the `policy=~"$policy"` matchers.
    assert policy["multi"] and policy["includeAll"] and policy["allValue"] == ".*"


def test_panels_fit_the_grid_without_overlapping(dashboard):
    cells = set()
    for panel in dashboard["panels"]:
        x, y, w, h = (panel["gridPos"][k] for k in "xywh")
        assert x >= 0 and x + w <= 24, panel["title"]
        area = {(i, j) for i in range(x, x + w) for j in range(y, y + h)}
        assert not cells & area, f"{panel['title']!r} overlaps another panel"
        cells |= area
