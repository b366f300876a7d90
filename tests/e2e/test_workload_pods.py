"""The workload generator's pods carry what their tasks declare, read back exactly as the
placement server reads a pod (metapolicy_operator.pods)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from e2e.workload import WORKLOAD_LABEL, Task, draw_tasks, pod_manifest
from metapolicy.features import PodAttributes
from metapolicy.trace_files import attributes_of, read_trace
from metapolicy.traces import SyntheticTasks, TraceTasks
from metapolicy.workload import DEFAULT_TASK_CLASSES, WorkloadSpec
from metapolicy_operator.pods import pod_attributes, pod_requests, qos_class

ROOT = Path(__file__).resolve().parents[2]
ATTRIBUTES = [
    PodAttributes(),
    PodAttributes(qos="Guaranteed", owner="service"),
    PodAttributes(qos="BestEffort", owner="batch", duration_hint_s=90.0),
    PodAttributes(qos="Burstable", owner="stateful", gpu=2.0, priority=1000),
    *(c.attributes() for c in DEFAULT_TASK_CLASSES),
]


@pytest.mark.parametrize("attributes", ATTRIBUTES)
def test_attributes_round_trip_through_the_feature_vector(attributes):
    assert attributes_of(attributes.vector()) == attributes


@pytest.mark.parametrize("attributes", ATTRIBUTES)
def test_a_pod_declares_its_tasks_attributes(attributes):
    task = Task(
        index=7, arrival=1.0, cpu=0.75, memory_mib=1536, duration=5.0, attributes=attributes
    )
    pod = pod_manifest(task, "wl-00007", labels={"app": "edge", WORKLOAD_LABEL: "wl"})
    assert pod["spec"]["schedulerName"] == "metapolicy-scheduler"
    assert pod["metadata"]["labels"] == {"app": "edge", WORKLOAD_LABEL: "wl"}
    assert qos_class(pod) == attributes.qos
    read, problem = pod_attributes(pod)
    assert problem is None and read == attributes
    requests = pod_requests(pod)
    if attributes.qos == "BestEffort":
        assert (requests.cpu, requests.memory_mib) == (0, 0)  # what Kubernetes counts
    else:
        assert (requests.cpu, requests.memory_mib) == (0.75, 1536)


def test_owner_references_can_be_left_out_for_a_real_cluster():
    task = Task(0, 0.0, 1.0, 1024, 5.0, PodAttributes(owner="batch"))
    pod = pod_manifest(task, "wl-00000", labels={}, owner_references=False)
    assert "ownerReferences" not in pod["metadata"]
    assert pod_attributes(pod)[0].owner == "other"


def test_node_selector_keeps_pods_on_the_scenarios_nodes():
    task = Task(0, 0.0, 1.0, 1024, 5.0, PodAttributes())
    pod = pod_manifest(task, "wl-00000", labels={}, node_selector={"zone": "a"})
    assert pod["spec"]["nodeSelector"] == {"zone": "a"}


def test_a_synthetic_episode_becomes_tasks_in_arrival_order():
    source = SyntheticTasks(WorkloadSpec(episode_tasks=64))
    tasks = draw_tasks(source, seed=3, capacity_cpu=32.0)
    assert len(tasks) == 64 and tasks[0].arrival == 0.0
    assert all(a.arrival <= b.arrival for a, b in itertools.pairwise(tasks))
    batch = source.draw([3], 32.0)
    assert [t.cpu for t in tasks] == batch.cpu[0].tolist()
    assert [t.duration for t in tasks] == batch.duration[0].tolist()
    owners = {t.attributes.owner for t in tasks}
    assert owners <= {c.owner for c in DEFAULT_TASK_CLASSES} and len(owners) > 1
    assert draw_tasks(source, seed=3, capacity_cpu=32.0, limit=10) == tasks[:10]
    assert np.isfinite([t.memory_mib for t in tasks]).all()


def test_a_trace_file_becomes_tasks_too(tmp_path):
    """A generic CSV trace (64 tasks, the attributes cycling) read back as the pods' tasks."""
    rows = ["arrival_s,cpu_cores,memory_mib,duration_s,qos,owner,duration_hint_s"]
    kinds = [("Guaranteed", "Deployment", ""), ("Burstable", "Job", "90"), ("BestEffort", "", "")]
    for i in range(64):
        qos, owner, hint = kinds[i % 3]
        rows.append(f"{i * 0.5},{0.25 + i % 4 * 0.25},{256 + i * 8},{10 + i},{qos},{owner},{hint}")
    (tmp_path / "trace.csv").write_text("\n".join(rows) + "\n")
    source = TraceTasks(read_trace(tmp_path / "trace.csv"), episode_tasks=16, load=None,
                        scale_sizes=False)  # fmt: skip
    tasks = draw_tasks(source, seed=0, capacity_cpu=32.0, largest=(16.0, 65536.0))
    assert len(tasks) == 16 and tasks[0].arrival == 0.0
    assert {t.attributes.qos for t in tasks} == {"Guaranteed", "Burstable", "BestEffort"}
    for task in tasks:
        pod = pod_manifest(task, f"tr-{task.index:05d}", labels={})
        assert pod_attributes(pod)[0] == task.attributes
