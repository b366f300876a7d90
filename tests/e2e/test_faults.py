"""The operator killed at every write boundary of training and adaptation, then restarted.

`METAPOLICY_FAULT_POINT` (test-only, see metapolicy_operator/faults.py) makes the operator
`os._exit` right after the candidate is stored, after the active pointer moves, after the
status patch or after the Event, in each stage (initial training, the zero-shot candidate,
the fine-tune). A second operator must then converge to a state consistent with the store:
a record in status for every stored version, the pointer equal to status.activeVersion, the
served nodes equal to the eligible ones, the counters right, and no adaptation run twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster import Environment, Operator, environment
from e2e.nodes import node_body
from e2e.wait import poll
from metapolicy.checkpoint import stored_record
from metapolicy_operator.configmap_store import ConfigMapStore
from metapolicy_operator.faults import BOUNDARIES, FAULT_ENV, FAULT_EXIT_CODE, STAGES

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL, NAMESPACE = "metapolicy.dev", "v1alpha1", "metapolicies", "default"
SPEC = {
    "hiddenSize": 16,
    "adaptation": {"settleSeconds": 0, "budgetSteps": 512, "backoffSeconds": 1},
    "validation": {"episodes": 4, "minRetention": 0.0, "onInconclusive": "promote"},
    "workload": {"episodeTasks": 32},
    "training": {"budgetSteps": 2048},
}
POINTS = [f"{boundary}:{stage}" for stage in STAGES for boundary in BOUNDARIES]
TIMEOUT = 180


def case_of(point: str) -> tuple[str, str]:
    """(policy name, stage) of a fault point."""
    return f"f{POINTS.index(point)}", point.split(":")[1]


def policy_body(case: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MetaPolicy",
        "metadata": {"name": case, "namespace": NAMESPACE},
        "spec": SPEC | {"nodeSelector": {"matchLabels": {"fault-case": case}}},
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    """The API server, with the policies of the adaptation cases trained up front by one
    operator; each case then runs its own operators (the faulty one, then a normal one)."""
    with environment(tmp_path_factory.mktemp("faults")) as env:
        adapting = [case for case, stage in map(case_of, POINTS) if stage != "train"]
        for case in adapting:
            for i in range(2):
                add_node(env, f"{case}-{i}", case)
            env.kube.custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, policy_body(case)
            )
        for case in adapting:
            env.kube.wait_ready(case, 2, TIMEOUT)
        env.operator.stop()
        yield env


def add_node(env: Environment, name: str, case: str) -> None:
    spec = {
        "name": name,
        "cpu": 8,
        "memory": "32Gi",
        "latencyMs": 5,
        "labels": {"fault-case": case},
    }
    env.kube.core.create_node(node_body(spec, "faults"))


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_each_write_boundary_converges_to_the_stored_state(
    cluster: Environment, point: str, tmp_path: Path
) -> None:
    case, stage = case_of(point)
    normal = Operator(cluster.kube.kubeconfig, tmp_path)
    faulty = Operator(cluster.kube.kubeconfig, tmp_path)
    try:
        faulty.start(env={FAULT_ENV: point})
        if stage == "train":
            for i in range(2):
                add_node(cluster, f"{case}-{i}", case)
            cluster.kube.custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, policy_body(case)
            )
        else:
            add_node(cluster, f"{case}-2", case)
        expected = 2 if stage == "train" else 3
        crashed = poll(
            lambda: (
                not faulty.process.running()
                or (
                    # a fine-tuned candidate that is not promoted moves no pointer: that point is
                    # not on its path, and the run ends without crashing
                    point == "after-activate:fine-tune"
                    and cluster.kube.policy_status(case).get("phase") == "Ready"
                    and cluster.kube.policy_status(case).get("currentNodes") == expected
                )
            ),
            TIMEOUT,
            f"the operator to pass {point}",
            describe=faulty.log_tail,
        )
        if not faulty.process.running():
            assert faulty.process.popen.returncode == FAULT_EXIT_CODE, faulty.log_tail()
        else:
            last = cluster.kube.policy_status(case)["lastAdaptation"]
            assert last["outcome"] != "promoted", "the pointer moved but the fault did not fire"
            faulty.stop()
        assert crashed
        normal.start()
        final = cluster.kube.wait_ready(case, expected, TIMEOUT)
        check_consistent(cluster, case, final, expected)
    finally:
        for operator in (faulty, normal):
            operator.stop()


def check_consistent(env: Environment, name: str, final: dict, expected: int) -> None:
    store = ConfigMapStore(env.kube.core, NAMESPACE, name)
    manifests = store.manifests()
    history = {h["version"]: h for h in final["history"] if h.get("version") is not None}
    # every stored version has its record in status (rebuilt if the crash lost it)
    for version, manifest in manifests.items():
        assert version in history, (version, sorted(history))
        record = stored_record(manifest["meta"])
        assert record is not None and str(record.outcome) == history[version]["outcome"]
    # the pointer, status and the eligible set agree
    assert store.active() == final["activeVersion"]
    served = manifests[final["activeVersion"]]["meta"]["node_names"]
    assert sorted(final["nodes"]) == sorted(served)
    assert final["eligibleNodes"] == final["currentNodes"] == len(served) == expected
    # no adaptation ran twice: one candidate per (backup, node set, trigger)
    made = [
        (r.get("parentVersion"), r.get("nodeSetHash"), r.get("trigger"))
        for r in store.history()
        if r.get("version") is not None and r.get("trigger") in ("initial", "zero-shot", "nodes")
    ]
    assert len(made) == len(set(made)), made
