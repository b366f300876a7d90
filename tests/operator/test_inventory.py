"""Node objects -> the policy's view of the cluster: quantities, eligibility, selectors."""

from __future__ import annotations

from typing import Any

import pytest

from metapolicy.cluster import NodeProfile
from metapolicy_operator.inventory import (
    DEFAULT_LATENCY_MS,
    LATENCY_ANNOTATION,
    REMOVAL_TAINTS,
    QuantityError,
    SelectorError,
    eligibility,
    eligible_profiles,
    matches_selector,
    node_profile,
    parse_cpu,
    parse_memory_mib,
)

MIB = 2**20
READY = [{"type": "Ready", "status": "True"}]


def make_node(
    name: str = "node-a",
    *,
    cpu: Any = "4",
    memory: Any = "16Gi",
    latency: str | None = None,
    zone: str | None = None,
    labels: dict[str, str] | None = None,
    conditions: list[dict[str, str]] | None = READY,
    unschedulable: bool | None = None,
    taints: list[dict[str, str]] | None = None,
    deleting: bool = False,
    allocatable: bool = True,
) -> dict[str, Any]:
    """A Node as the API returns it; `None` leaves a field out (cpu=None: no cpu at all)."""
    resources = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
    if zone is not None:
        metadata["labels"]["topology.kubernetes.io/zone"] = zone
    if latency is not None:
        metadata["annotations"] = {LATENCY_ANNOTATION: latency}
    if deleting:
        metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    spec: dict[str, Any] = {}
    if unschedulable is not None:
        spec["unschedulable"] = unschedulable
    if taints is not None:
        spec["taints"] = taints
    status: dict[str, Any] = {"capacity": dict(resources)}
    if allocatable:
        status["allocatable"] = dict(resources)
    if conditions is not None:
        status["conditions"] = conditions
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": metadata,
        "spec": spec,
        "status": status,
    }


# --------------------------------------------------------------------------- quantities


@pytest.mark.parametrize(
    ("quantity", "cores"),
    [
        ("500m", 0.5),
        ("2", 2.0),
        ("1.5", 1.5),
        ("250000u", 0.25),
        ("1000000000n", 1.0),
        ("1k", 1000.0),
        ("3920m", 3.92),
        (".5", 0.5),
        ("5.", 5.0),
        ("+2", 2.0),
        ("1e3", 1000.0),
        ("1E3", 1000.0),
        ("15e-1", 1.5),
        ("1E", 1e18),  # a lone "E" is the exa suffix, not an exponent
        ("0", 0.0),
        ("-0", 0.0),
        (4, 4.0),
        (0.25, 0.25),
    ],
)
def test_parse_cpu_valid(quantity, cores):
    assert parse_cpu(quantity) == pytest.approx(cores, rel=1e-12)


@pytest.mark.parametrize(
    ("quantity", "mib"),
    [
        ("16Gi", 16384.0),
        ("16G", 16e9 / MIB),
        ("512Mi", 512.0),
        ("1Ti", 1024.0 * 1024.0),
        ("1024Ki", 1.0),
        ("15991652Ki", 15991652 / 1024),
        ("123456789", 123456789 / MIB),
        ("1e9", 1e9 / MIB),
        ("500M", 500e6 / MIB),
        ("128974848", 123.0),
        ("129e6", 129e6 / MIB),
        ("129M", 129e6 / MIB),
        ("123Mi", 123.0),
        ("1.5Gi", 1536.0),
        ("100m", 0.1 / MIB),  # milli-bytes are legal, if silly
        ("1Pi", 2.0**30),
        ("1Ei", 2.0**40),
        ("1k", 1000 / MIB),
        (1073741824, 1024.0),
    ],
)
def test_parse_memory_mib_valid(quantity, mib):
    assert parse_memory_mib(quantity) == pytest.approx(mib, rel=1e-12)


def test_decimal_and_binary_suffixes_differ():
    assert parse_memory_mib("1G") < parse_memory_mib("1Gi")
    assert parse_memory_mib("1M") * MIB == 1_000_000
    assert parse_memory_mib("1Mi") * MIB == 1_048_576


INVALID = [
    "",
    "abc",
    "Gi",
    "-1",
    "-500m",
    "-1Gi",
    "NaN",
    "nan",
    "inf",
    "Infinity",
    "1K",  # Kubernetes has k (1000) and Ki (1024), no K
    "1KB",
    "1gi",
    "1Gib",
    "1 Gi",
    " 1",
    "1\n",
    "1e",  # an exponent needs digits
    "1e1.5",
    "e3",
    "1.2.3",
    ".",
    "+",
    "0x10",
    "1_000",
    "1e99999999999999999999",
    "1e400",  # valid syntax, beyond any float
    float("nan"),
    float("inf"),
    -1,
    -0.5,
    10**400,
    True,
    None,
    [1],
]


@pytest.mark.parametrize("quantity", INVALID, ids=repr)
def test_parse_cpu_invalid(quantity):
    with pytest.raises(QuantityError) as caught:
        parse_cpu(quantity)
    assert repr(quantity)[:20] in str(caught.value)


@pytest.mark.parametrize("quantity", INVALID, ids=repr)
def test_parse_memory_invalid(quantity):
    with pytest.raises(QuantityError):
        parse_memory_mib(quantity)


def test_quantity_error_is_a_value_error():
    assert issubclass(QuantityError, ValueError)


# --------------------------------------------------------------------------- eligibility


def test_ready_node_is_eligible():
    assert eligibility(make_node()) == (True, "ready")


@pytest.mark.parametrize("status", ["False", "Unknown"])
def test_not_ready_node(status):
    node = make_node(conditions=[{"type": "Ready", "status": status}])
    assert eligibility(node) == (False, "not Ready")


@pytest.mark.parametrize(
    "conditions",
    [None, [], [{"type": "MemoryPressure", "status": "False"}]],
    ids=["no-conditions", "empty", "no-ready-condition"],
)
def test_missing_ready_condition_is_not_ready(conditions):
    assert eligibility(make_node(conditions=conditions)) == (False, "not Ready")


def test_ready_among_other_conditions():
    conditions = [{"type": "DiskPressure", "status": "True"}, *READY]
    assert eligibility(make_node(conditions=conditions)) == (True, "ready")


def test_cordoned_node():
    assert eligibility(make_node(unschedulable=True)) == (False, "unschedulable (cordoned)")
    assert eligibility(make_node(unschedulable=False)) == (True, "ready")


def test_node_being_deleted():
    assert eligibility(make_node(deleting=True)) == (False, "being deleted")


def test_being_deleted_wins_over_other_reasons():
    node = make_node(deleting=True, unschedulable=True, conditions=None)
    assert eligibility(node) == (False, "being deleted")


@pytest.mark.parametrize(
    ("taint", "reason"),
    [
        (
            {
                "key": "ToBeDeletedByClusterAutoscaler",
                "value": "1700000000",
                "effect": "NoSchedule",
            },
            "tainted for removal by cluster-autoscaler (ToBeDeletedByClusterAutoscaler)",
        ),
        (
            {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"},
            "tainted for removal by Karpenter (karpenter.sh/disrupted)",
        ),
        (
            {"key": "karpenter.sh/disruption", "value": "disrupting", "effect": "NoSchedule"},
            "tainted for removal by Karpenter (karpenter.sh/disruption)",
        ),
    ],
)
def test_removal_taints(taint, reason):
    other = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    assert eligibility(make_node(taints=[other, taint])) == (False, reason)


def test_every_removal_taint_is_tested():
    assert set(REMOVAL_TAINTS) == {
        "ToBeDeletedByClusterAutoscaler",
        "karpenter.sh/disrupted",
        "karpenter.sh/disruption",
    }


@pytest.mark.parametrize(
    "taint",
    [
        {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
        {"key": "DeletionCandidateOfClusterAutoscaler", "effect": "PreferNoSchedule"},
        {"key": "karpenter.sh/unregistered", "effect": "NoExecute"},
    ],
)
def test_unrelated_taint_keeps_node_eligible(taint):
    assert eligibility(make_node(taints=[taint])) == (True, "ready")


# --------------------------------------------------------------------------- selectors

LABELS = {"pool": "batch", "tier": "gold", "gpu": "true"}


@pytest.mark.parametrize("selector", [None, {}, {"matchLabels": {}, "matchExpressions": []}])
def test_empty_selector_selects_everything(selector):
    assert matches_selector(LABELS, selector)
    assert matches_selector({}, selector)
    assert matches_selector(None, selector)


@pytest.mark.parametrize(
    ("match_labels", "expected"),
    [
        ({"pool": "batch"}, True),
        ({"pool": "batch", "tier": "gold"}, True),
        ({"pool": "web"}, False),
        ({"pool": "batch", "tier": "silver"}, False),
        ({"zone": "a"}, False),  # absent key
    ],
)
def test_match_labels(match_labels, expected):
    assert matches_selector(LABELS, {"matchLabels": match_labels}) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"key": "pool", "operator": "In", "values": ["batch", "web"]}, True),
        ({"key": "pool", "operator": "In", "values": ["web"]}, False),
        ({"key": "zone", "operator": "In", "values": ["a"]}, False),
        ({"key": "pool", "operator": "NotIn", "values": ["web"]}, True),
        ({"key": "pool", "operator": "NotIn", "values": ["batch"]}, False),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, True),  # absent key
        ({"key": "gpu", "operator": "Exists"}, True),
        ({"key": "zone", "operator": "Exists"}, False),
        ({"key": "gpu", "operator": "DoesNotExist"}, False),
        ({"key": "zone", "operator": "DoesNotExist"}, True),  # absent key
    ],
)
def test_match_expressions(expression, expected):
    assert matches_selector(LABELS, {"matchExpressions": [expression]}) is expected


def test_expressions_are_anded():
    exists = {"key": "gpu", "operator": "Exists"}
    not_batch = {"key": "pool", "operator": "NotIn", "values": ["batch"]}
    assert matches_selector(LABELS, {"matchExpressions": [exists]})
    assert not matches_selector(LABELS, {"matchExpressions": [exists, not_batch]})


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"pool": "batch", "gpu": "true"}, True),
        ({"pool": "batch"}, False),  # matchLabels holds, the expression does not
        ({"pool": "web", "gpu": "true"}, False),  # the expression holds, matchLabels does not
    ],
)
def test_match_labels_and_expressions_combined(labels, expected):
    selector = {
        "matchLabels": {"pool": "batch"},
        "matchExpressions": [{"key": "gpu", "operator": "Exists"}],
    }
    assert matches_selector(labels, selector) is expected


@pytest.mark.parametrize(
    "expression",
    [{"key": "pool", "operator": "Gt", "values": ["1"]}, {"operator": "Exists"}],
    ids=["unknown-operator", "no-key"],
)
def test_invalid_selector_is_an_error(expression):
    with pytest.raises(SelectorError):
        matches_selector(LABELS, {"matchExpressions": [expression]})


# --------------------------------------------------------------------------- node_profile


def test_profile_from_good_node():
    node = make_node("node-a", cpu="3920m", memory="15991652Ki", latency="2.5", zone="eu-1a")
    profile, issues = node_profile(node)
    assert issues == []
    assert profile == NodeProfile(
        name="node-a", cpu=3.92, memory_mib=15991652 / 1024, latency_ms=2.5, zone="eu-1a"
    )


def test_missing_latency_annotation_is_the_default_without_issue():
    profile, issues = node_profile(make_node(latency=None))
    assert profile is not None and profile.latency_ms == DEFAULT_LATENCY_MS
    assert profile.zone is None
    assert issues == []


def test_zero_latency_is_valid():
    profile, issues = node_profile(make_node(latency="0"))
    assert profile is not None and profile.latency_ms == 0.0
    assert issues == []


@pytest.mark.parametrize("latency", ["fast", "", "5ms", "nan", "inf", "-1", "-0.5"])
def test_bad_latency_uses_default_and_reports(latency):
    profile, issues = node_profile(make_node("node-b", latency=latency))
    assert profile is not None and profile.latency_ms == DEFAULT_LATENCY_MS
    [issue] = issues
    assert issue.node == "node-b"
    assert issue.field == f"annotation {LATENCY_ANNOTATION}"
    assert issue.value == latency
    assert "node-b" in issue.message and "default" in issue.message


def test_negative_latency_message_says_so():
    _, [issue] = node_profile(make_node(latency="-3"))
    assert "negative" in issue.message


def test_missing_allocatable_falls_back_to_capacity():
    node = make_node(cpu="8", memory="32Gi", allocatable=False)
    profile, issues = node_profile(node)
    assert issues == []
    assert profile is not None and (profile.cpu, profile.memory_mib) == (8.0, 32768.0)


def test_allocatable_wins_over_capacity():
    node = make_node(cpu="8", memory="32Gi")
    node["status"]["allocatable"] = {"cpu": "7500m", "memory": "30Gi"}
    profile, _ = node_profile(node)
    assert profile is not None and (profile.cpu, profile.memory_mib) == (7.5, 30720.0)


def test_garbage_cpu_skips_the_node():
    profile, issues = node_profile(make_node("node-c", cpu="lots"))
    assert profile is None
    [issue] = issues
    assert (issue.node, issue.field, issue.value) == ("node-c", "status.allocatable.cpu", "lots")
    assert "node-c" in issue.message and "skipped" in issue.message


def test_garbage_cpu_and_memory_are_both_reported():
    _, issues = node_profile(make_node(cpu="-1", memory="16GB"))
    assert [i.field for i in issues] == ["status.allocatable.cpu", "status.allocatable.memory"]


def test_missing_memory_skips_the_node():
    profile, [issue] = node_profile(make_node(memory=None))
    assert profile is None
    assert issue.field == "status.allocatable.memory" and issue.value == ""
    assert "skipped" in issue.message


def test_zero_cpu_skips_the_node():
    profile, [issue] = node_profile(make_node(cpu="0"))
    assert profile is None
    assert issue.field == "status.allocatable.cpu" and "zero" in issue.message


def test_node_without_name_is_skipped():
    node = make_node()
    del node["metadata"]["name"]
    profile, [issue] = node_profile(node)
    assert profile is None and issue.field == "metadata.name"


# --------------------------------------------------------------------------- eligible_profiles


def test_eligible_profiles_sorted_with_reasons():
    nodes = [
        make_node("node-c", cpu="2"),
        make_node("node-a", cpu="8"),
        make_node("node-d", unschedulable=True),
        make_node("node-b", cpu="4"),
        make_node("node-e", conditions=None),
        make_node("node-f", taints=[{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]),
    ]
    profiles, issues, reasons = eligible_profiles(nodes, None)
    assert [p.name for p in profiles] == ["node-a", "node-b", "node-c"]
    assert [p.cpu for p in profiles] == [8.0, 4.0, 2.0]
    assert issues == []
    assert reasons == {
        "node-d": "unschedulable (cordoned)",
        "node-e": "not Ready",
        "node-f": "tainted for removal by Karpenter (karpenter.sh/disrupted)",
    }


def test_unselected_nodes_are_neither_profiles_nor_reasons():
    nodes = [
        make_node("node-a", labels={"pool": "batch"}),
        make_node("node-b", labels={"pool": "web"}),
        make_node("node-c", labels={"pool": "web"}, deleting=True),
    ]
    profiles, _, reasons = eligible_profiles(nodes, {"matchLabels": {"pool": "batch"}})
    assert [p.name for p in profiles] == ["node-a"]
    assert reasons == {}


def test_node_with_bad_quantity_is_excluded_with_an_issue():
    nodes = [make_node("node-a"), make_node("node-b", memory="a lot", latency="x")]
    profiles, issues, reasons = eligible_profiles(nodes, {})
    assert [p.name for p in profiles] == ["node-a"]
    assert {(i.node, i.field) for i in issues} == {
        ("node-b", "status.allocatable.memory"),
        ("node-b", f"annotation {LATENCY_ANNOTATION}"),
    }
    assert reasons == {"node-b": "invalid node data (status.allocatable.memory)"}


def test_ineligible_nodes_are_not_read():
    nodes = [make_node("node-a", cpu="garbage", deleting=True)]
    profiles, issues, reasons = eligible_profiles(nodes, None)
    assert (profiles, issues, reasons) == ([], [], {"node-a": "being deleted"})


def test_latency_issue_keeps_the_node():
    profiles, issues, reasons = eligible_profiles([make_node("node-a", latency="soon")], None)
    assert [p.latency_ms for p in profiles] == [DEFAULT_LATENCY_MS]
    assert len(issues) == 1 and reasons == {}


def test_duplicate_node_is_reported_once_and_ignored():
    nodes = [make_node("node-a", cpu="2"), make_node("node-a", cpu="4")]
    profiles, [issue], reasons = eligible_profiles(nodes, None)
    assert [p.cpu for p in profiles] == [2.0]
    assert issue.node == "node-a" and "twice" in issue.message
    assert reasons == {}


def test_every_selected_node_is_accounted_for():
    nodes = [
        make_node("node-a"),
        make_node("node-b", cpu="bad"),
        make_node("node-c", deleting=True),
        make_node("node-d", conditions=[{"type": "Ready", "status": "Unknown"}]),
    ]
    profiles, _, reasons = eligible_profiles(nodes, None)
    names = {p.name for p in profiles}
    assert names.isdisjoint(reasons)
    assert names | set(reasons) == {"node-a", "node-b", "node-c", "node-d"}
