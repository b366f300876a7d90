"""kube-scheduler's extender JSON, as `HTTPExtender` sends and reads it
(k8s.io/kube-scheduler/extender/v1 types.go, pkg/scheduler/extender.go)."""

import json

import pytest

from metapolicy_operator.serving.wire import (
    BadRequest,
    filter_error,
    filter_result,
    host_priority_list,
    parse_args,
)

# What encoding/json makes of ExtenderArgs{Pod: &pod, NodeNames: &names} with nodeCacheCapable:
# Go field names as keys, the nil *v1.NodeList as null, the v1.Pod in its own camelCase JSON.
NODE_CACHE_CAPABLE = b"""{
  "Pod": {
    "metadata": {
      "name": "web-7d4b9c-x2k8p", "generateName": "web-7d4b9c-", "namespace": "shop",
      "uid": "5e0f6f0e-3c55-4d0b-9a8b-2f1c5c0d6a11", "resourceVersion": "48213",
      "creationTimestamp": "2025-03-01T10:00:00Z",
      "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
      "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c",
                           "uid": "b1", "controller": true, "blockOwnerDeletion": true}],
      "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}]
    },
    "spec": {
      "volumes": [{"name": "kube-api-access", "projected": {"sources": []}}],
      "containers": [{
        "name": "web", "image": "nginx:1.27",
        "ports": [{"containerPort": 80, "protocol": "TCP"}],
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                      "requests": {"cpu": "250m", "memory": "256Mi"}},
        "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"
      }],
      "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
      "serviceAccountName": "default", "securityContext": {},
      "schedulerName": "metapolicy-scheduler",
      "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                       "effect": "NoExecute", "tolerationSeconds": 300}],
      "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
    },
    "status": {"phase": "Pending", "qosClass": "Burstable"}
  },
  "Nodes": null,
  "NodeNames": ["worker-a", "worker-b", "worker-c"]
}"""


def test_node_cache_capable_args_decode_with_the_full_pod():
    args = parse_args(NODE_CACHE_CAPABLE)
    assert args.node_cache_capable
    assert args.names == ["worker-a", "worker-b", "worker-c"]
    assert args.pod["metadata"]["name"] == "web-7d4b9c-x2k8p"
    assert args.pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "250m"


def test_full_node_objects_decode_too():
    body = json.loads(NODE_CACHE_CAPABLE)
    body["NodeNames"] = None
    body["Nodes"] = {
        "metadata": {},
        "items": [{"metadata": {"name": "worker-a"}}, {"metadata": {"name": "worker-b"}}],
    }
    args = parse_args(json.dumps(body).encode())
    assert not args.node_cache_capable
    assert args.names == ["worker-a", "worker-b"]
    assert args.nodes[1]["metadata"]["name"] == "worker-b"


def test_an_empty_node_list_is_not_an_error():
    args = parse_args(b'{"Pod": {"metadata": {}}, "Nodes": {"metadata": {}}, "NodeNames": null}')
    assert args.names == [] and args.nodes == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"Pod": {}, "NodeNames": "a"}', "NodeNames is not a list"),
        (b'{"Pod": {}, "Nodes": {"items": [1]}}', "Nodes is not a NodeList"),
        (b'{"Pod": {}}', "neither NodeNames nor Nodes"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(body, message):
    with pytest.raises(BadRequest, match=message):
        parse_args(body)


def test_readable_candidates_without_a_readable_pod_still_parse():
    args = parse_args(b'{"NodeNames": ["a"]}')
    assert args.names == ["a"] and args.pod == {}
    assert "Pod is missing" in args.pod_error


def test_host_priority_list_has_exactly_the_go_keys():
    assert host_priority_list(["a", "b"], [10, 3]) == [
        {"Host": "a", "Score": 10},
        {"Host": "b", "Score": 3},
    ]


def test_filter_result_answers_in_the_field_the_request_used():
    args = parse_args(NODE_CACHE_CAPABLE)
    result = filter_result(args, [0, 2], {"worker-b": "Insufficient cpu"})
    assert set(result) == {
        "Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error",
    }  # fmt: skip
    assert result["NodeNames"] == ["worker-a", "worker-c"] and result["Nodes"] is None
    assert result["FailedNodes"] == {"worker-b": "Insufficient cpu"}
    assert result["FailedAndUnresolvableNodes"] == {} and result["Error"] == ""

    body = json.loads(NODE_CACHE_CAPABLE)
    body["NodeNames"] = None
    body["Nodes"] = {"items": [{"metadata": {"name": n}} for n in ("worker-a", "worker-b")]}
    result = filter_result(parse_args(json.dumps(body).encode()), [1], {"worker-a": "full"})
    assert result["NodeNames"] is None
    assert [n["metadata"]["name"] for n in result["Nodes"]["items"]] == ["worker-b"]


def test_filter_error_sets_error():
    assert filter_error("bad")["Error"] == "bad"
