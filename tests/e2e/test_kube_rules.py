"""kube-scheduler's filter and score as the scheduler driver plays them (e2e/kube_rules.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from e2e.kube_rules import (
    NOT_READY,
    UNREACHABLE,
    UNSCHEDULABLE,
    Allocatable,
    Usage,
    allocatable,
    default_scores,
    misfit,
    node_taints,
    select_host,
    tolerates,
    untolerated_taint,
    usage_by_node,
)
from metapolicy.baselines import kube_default_scores
from metapolicy_operator.pods import Requests


def node(name="n", ready="True", unschedulable=False, taints=(), cpu="4", memory="8Gi", pods=None):
    allocatable_ = {"cpu": cpu, "memory": memory} | ({"pods": pods} if pods else {})
    return {
        "metadata": {"name": name},
        "spec": {"unschedulable": unschedulable, "taints": list(taints)},
        "status": {"allocatable": allocatable_, "conditions": [{"type": "Ready", "status": ready}]},
    }


def pod(name="p", node_name=None, phase="Running", cpu="1", memory="1Gi", tolerations=()):
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node_name,
            "tolerations": list(tolerations),
            "containers": [
                {"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}
            ],
        },
        "status": {"phase": phase},
    }


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        ({"operator": "Exists"}, {"key": "a", "effect": "NoSchedule"}, True),  # tolerates all
        (
            {"key": "a", "operator": "Exists"},
            {"key": "a", "value": "x", "effect": "NoExecute"},
            True,
        ),
        ({"key": "a", "value": "x"}, {"key": "a", "value": "x", "effect": "NoSchedule"}, True),
        ({"key": "a", "value": "y"}, {"key": "a", "value": "x", "effect": "NoSchedule"}, False),
        ({"key": "b", "operator": "Exists"}, {"key": "a", "effect": "NoSchedule"}, False),
        ({"key": "a", "effect": "NoExecute"}, {"key": "a", "effect": "NoSchedule"}, False),
    ],
)
def test_tolerations_as_the_api_defines_them(toleration, taint, expected):
    assert tolerates(toleration, taint) is expected


def test_the_node_lifecycle_taints_are_derived_from_the_node():
    assert node_taints(node()) == []
    assert node_taints(node(ready="False")) == [{"key": NOT_READY, "effect": "NoSchedule"}]
    assert node_taints(node(ready="Unknown")) == [{"key": UNREACHABLE, "effect": "NoSchedule"}]
    assert node_taints(node(unschedulable=True)) == [{"key": UNSCHEDULABLE, "effect": "NoSchedule"}]


def test_only_filtering_taints_that_are_not_tolerated_exclude_a_node():
    soft = {"key": "a", "effect": "PreferNoSchedule"}
    hard = {"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}
    assert untolerated_taint(pod(), node(taints=[soft])) is None
    assert untolerated_taint(pod(), node(taints=[hard])) == hard
    tolerant = pod(tolerations=[{"key": hard["key"], "operator": "Exists"}])
    assert untolerated_taint(tolerant, node(taints=[hard])) is None
    assert untolerated_taint(pod(), node(unschedulable=True))["key"] == UNSCHEDULABLE
    assert untolerated_taint(pod(), node(ready="False"))["key"] == NOT_READY


def test_accounting_counts_bound_unfinished_pods():
    pods = [
        pod("a", "n1"),
        pod("b", "n1", cpu="500m", memory="512Mi"),
        pod("c", "n2", phase="Succeeded"),  # finished: holds nothing
        pod("d", None, phase="Pending"),  # not bound
    ]
    usage = usage_by_node(pods)
    assert usage == {"n1": Usage(cpu_milli=1500, memory_bytes=1.5 * 2**30, pods=2)}


def test_fit_as_node_resources_fit_filters():
    room = allocatable(node(cpu="2", memory="4Gi", pods="2"))
    assert room == Allocatable(cpu_milli=2000, memory_bytes=4 * 2**30, pods=2)
    half = Requests(cpu=1.0, memory_mib=1024)
    assert misfit(half, room, Usage()) is None
    assert misfit(half, room, Usage(1500, 0, 1)) == "Insufficient cpu"
    assert misfit(half, room, Usage(0, 3.5 * 2**30, 1)) == "Insufficient memory"
    assert misfit(Requests(), room, Usage(2000, 4 * 2**30, 1)) is None  # asks for nothing
    assert misfit(Requests(), room, Usage(0, 0, 2)) == "Too many pods"
    assert misfit(half, allocatable(node(cpu="8")), Usage(0, 0, 500)) is None  # no pods limit


def test_default_scores_are_least_allocated_plus_balanced_allocation():
    rooms = {
        "empty": Allocatable(4000, 8 * 2**30, None),
        "busy": Allocatable(4000, 8 * 2**30, None),
    }
    used = {"busy": Usage(2000, 1 * 2**30, 1)}
    scores = default_scores(Requests(cpu=1.0, memory_mib=2048), rooms, used)
    # empty: cpu 25% and memory 25% used -> least 75, balanced 100
    assert scores["empty"] == 175
    # busy: cpu 75%, memory 37.5% -> least floor((25 + 62.5)/2 -> 25, 62) = 43; balanced
    # floor((1 - 0.375 / 2) * 100) = 81
    assert scores["busy"] == 43 + 81
    expected = kube_default_scores(
        (np.array([1000.0, 3000.0]), np.array([2.0 * 2**30, 3.0 * 2**30])),
        (np.array([4000.0, 4000.0]), np.array([8.0 * 2**30, 8.0 * 2**30])),
    )
    assert [scores["empty"], scores["busy"]] == expected.tolist()


def test_select_host_takes_the_best_and_breaks_ties_at_random():
    rng = random.Random(0)
    assert select_host({"a": 3, "b": 7}, rng) == "b"
    picks = {select_host({"a": 5, "b": 5, "c": 1}, rng) for _ in range(50)}
    assert picks == {"a", "b"}
    with pytest.raises(ValueError):
        select_host({}, rng)
