"""The serving examples: a MetaPolicy with a podSelector, and workloads that opt in to the
MetaPolicy scheduler. The workloads validate against the Kubernetes schemas, ask for the
profile of manifests/scheduler/ by name, and their pods are the ones the policy places, read
the way the placement server reads a pod. (The MetaPolicy itself is validated against the CRD
with the other examples, in tests/crd/.)"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from e2e.extender import scheduler_configuration
from metapolicy_operator.pods import pod_attributes, policy_matches, qos_class

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
POLICY = yaml.safe_load((EXAMPLES / "metapolicy-serving.yaml").read_text())
WORKLOADS = [d for d in yaml.safe_load_all((EXAMPLES / "workloads" / "edge-api.yaml").read_text())]


def pod_of(workload: dict) -> dict:
    """The pod a controller makes from the workload's template (namespace and owner set)."""
    template = workload["spec"]["template"]
    owner = {"Deployment": "ReplicaSet"}.get(workload["kind"], workload["kind"])
    metadata = {
        **template["metadata"],
        "namespace": workload["metadata"]["namespace"],
        "ownerReferences": [{"kind": owner, "name": "x", "controller": True}],
    }
    return {"metadata": metadata, "spec": template["spec"]}


@pytest.mark.parametrize("version", ["1.28", kubernetes_validate.latest_version()])
def test_workloads_match_the_kubernetes_schema(version):
    for workload in WORKLOADS:
        kubernetes_validate.validate(workload, version, strict=True)


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w["kind"] for w in WORKLOADS])
def test_the_policy_places_the_workloads_pods(workload):
    (profile,) = scheduler_configuration()["profiles"]
    pod = pod_of(workload)
    assert pod["spec"]["schedulerName"] == profile["schedulerName"]
    spec = POLICY["spec"]
    namespaces = spec.get("namespaces") or [POLICY["metadata"]["namespace"]]
    assert policy_matches(pod, spec["podSelector"], namespaces)
    attributes, problem = pod_attributes(pod)
    assert problem is None
    if workload["kind"] == "Job":
        assert (attributes.owner, attributes.duration_hint_s) == ("batch", 90.0)
        assert qos_class(pod) == "Burstable"
    else:
        assert (attributes.owner, qos_class(pod)) == ("service", "Guaranteed")


def test_the_policy_serves_actively_and_selects_pods():
    assert POLICY["kind"] == "MetaPolicy"
    assert POLICY["spec"]["serving"]["mode"] == "active"
    assert POLICY["spec"]["podSelector"]["matchLabels"]
