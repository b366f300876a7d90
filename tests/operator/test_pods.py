"""Pods read the way kube-scheduler reads them."""

from __future__ import annotations

import pytest

from metapolicy_operator.pods import (
    InvalidPod,
    Requests,
    holds_resources,
    parse_duration,
    pod_attributes,
    pod_requests,
    policy_matches,
    qos_class,
)


def container(cpu=None, memory=None, limits=None, **extra) -> dict:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    resources = {"requests": requests} if requests else {}
    if limits:
        resources["limits"] = limits
    return {"name": "c", "resources": resources, **extra}


def pod(containers=(), init=(), **spec) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ml", "labels": {"app": "x"}},
        "spec": {"containers": list(containers), "initContainers": list(init), **spec},
    }


def test_app_containers_add_up():
    got = pod_requests(pod([container("500m", "1Gi"), container("1", "512Mi")]))
    assert got == Requests(1.5, 1536.0)


def test_a_big_init_container_sets_the_floor():
    got = pod_requests(pod([container("1", "1Gi")], init=[container("3", "256Mi")]))
    assert got == Requests(3.0, 1024.0)


def test_sidecars_run_alongside_and_stack_under_later_init_containers():
    """upstream's PodRequests: sidecar 1 + app 1 = 2; the init container after the sidecar
    needs its own 2 + the sidecar's 1 = 3, which wins."""
    sidecar = container("1", "100Mi", restartPolicy="Always")
    got = pod_requests(pod([container("1", "100Mi")], init=[sidecar, container("2", "100Mi")]))
    assert got == Requests(3.0, 200.0)


def test_overhead_and_pod_level_requests():
    got = pod_requests(pod([container("1", "1Gi")], overhead={"cpu": "250m", "memory": "64Mi"}))
    assert got == Requests(1.25, 1088.0)
    level = pod([container("1", "1Gi")], resources={"requests": {"cpu": "4"}})
    assert pod_requests(level) == Requests(4.0, 1024.0)


def test_an_unreadable_request_names_the_pod_and_the_field():
    with pytest.raises(InvalidPod, match=r"pod ml/p: spec.containers\[0\]"):
        pod_requests(pod([container("lots")]))


@pytest.mark.parametrize(
    ("containers", "qos"),
    [
        ([container()], "BestEffort"),
        ([container("1", "1Gi")], "Burstable"),
        ([container("1", "1Gi", limits={"cpu": "1", "memory": "1Gi"})], "Guaranteed"),
        ([container(limits={"cpu": "1", "memory": "1Gi"})], "Guaranteed"),  # requests default
        ([container("1", "1Gi", limits={"cpu": "2", "memory": "1Gi"})], "Burstable"),
    ],
)
def test_qos_class_is_computed_when_status_lacks_it(containers, qos):
    assert qos_class(pod(containers)) == qos


def test_status_qos_class_wins():
    body = pod([container()]) | {"status": {"qosClass": "Guaranteed"}}
    assert qos_class(body) == "Guaranteed"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400), ("42", 42)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5", "5 minutes", "inf"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_attributes_from_the_pod_spec():
    body = pod(
        [container("1", "1Gi", limits={"nvidia.com/gpu": "2"})],
        priority=1000,
    )
    body["metadata"]["ownerReferences"] = [{"kind": "Job", "name": "j", "controller": True}]
    body["metadata"]["annotations"] = {"metapolicy.dev/expected-duration": "10m"}
    attributes, problem = pod_attributes(body)
    assert problem is None
    assert (attributes.qos, attributes.gpu, attributes.priority) == ("Burstable", 2.0, 1000)
    assert (attributes.owner, attributes.duration_hint_s) == ("batch", 600.0)


def test_a_bad_duration_hint_is_reported_and_ignored():
    body = pod([container("1")])
    body["metadata"]["annotations"] = {"metapolicy.dev/expected-duration": "a while"}
    attributes, problem = pod_attributes(body)
    assert attributes.duration_hint_s is None
    assert "ml/p" in problem and "expected-duration" in problem


def test_only_bound_unfinished_pods_hold_resources():
    assert not holds_resources(pod())
    bound = pod(nodeName="n1")
    assert holds_resources(bound)
    assert holds_resources(bound | {"status": {"phase": "Running"}})
    assert not holds_resources(bound | {"status": {"phase": "Succeeded"}})
    assert not holds_resources(bound | {"status": {"phase": "Failed"}})


def test_policy_matching_needs_a_selector_and_the_namespace():
    body = pod()
    assert not policy_matches(body, None, ["ml"])
    assert policy_matches(body, {}, ["ml"])
    assert policy_matches(body, {"matchLabels": {"app": "x"}}, ["ml", "web"])
    assert not policy_matches(body, {"matchLabels": {"app": "y"}}, ["ml"])
    assert not policy_matches(body, {}, ["default"])
