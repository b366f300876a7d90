import math

import pytest

from metapolicy.cluster import (
    InvalidNodeProfile,
    NodeProfile,
    check_unique,
    make_cluster,
    resize_cluster,
)
from metapolicy.workload import InvalidWorkload, TaskClass, WorkloadSpec


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cpu": -1}, "cpu=-1 must be positive"),
        ({"cpu": 0}, "cpu=0 must be positive"),
        ({"memory_mib": math.nan}, "memory_mib=nan is not finite"),
        ({"latency_ms": -3}, "latency_ms=-3 must be positive"),
        ({"latency_ms": None}, "latency_ms is missing"),
        ({"cpu": "lots"}, "cpu='lots' is not a number"),
        ({"name": "Bad_Name"}, "not a valid Kubernetes name"),
    ],
)
def test_invalid_profiles_are_refused_with_the_field_named(fields, message):
    data = {"name": "edge-1", "cpu": 4, "memory_mib": 8192, "latency_ms": 5} | fields
    with pytest.raises(InvalidNodeProfile, match=message):
        NodeProfile(**data)


def test_from_dict_reports_missing_fields():
    with pytest.raises(InvalidNodeProfile, match=r"edge-1: missing \['latency_ms'\]"):
        NodeProfile.from_dict({"name": "edge-1", "cpu": 4, "memory_mib": 1024})


def test_profile_round_trips_through_dict():
    node = NodeProfile("edge-1", 4, 8192, 5.5, zone="a")
    assert NodeProfile.from_dict(node.to_dict()) == node


def test_duplicate_names_are_refused():
    node = NodeProfile("edge-1", 4, 8192, 5)
    with pytest.raises(InvalidNodeProfile, match="appears twice"):
        check_unique([node, node])


def test_generated_clusters_are_heterogeneous_and_deterministic():
    assert make_cluster(8, seed=1) == make_cluster(8, seed=1)
    assert len({n.cpu for n in make_cluster(12, seed=1)}) > 1


def test_resize_cluster_removes_named_nodes_and_adds_fresh_names():
    nodes = make_cluster(6)
    smaller = resize_cluster(nodes, -2, remove=["node-02", "node-04"])
    assert [n.name for n in smaller] == ["node-00", "node-01", "node-03", "node-05"]
    bigger = resize_cluster(nodes, 3)
    assert [n.name for n in bigger][-3:] == ["node-06", "node-07", "node-08"]


def test_workload_rejects_bad_ranges():
    with pytest.raises(InvalidWorkload, match="cpu range"):
        TaskClass("x", 1.0, cpu=(2, 1), memory_mib=(1, 2), duration=(1, 2))
    with pytest.raises(InvalidWorkload, match="load"):
        WorkloadSpec(load=0)


def test_workload_round_trips_through_dict():
    spec = WorkloadSpec(load=0.5, episode_tasks=32)
    assert WorkloadSpec.from_dict(spec.to_dict()) == spec
