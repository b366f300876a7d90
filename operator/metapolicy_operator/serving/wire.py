"""kube-scheduler's extender wire types (`k8s.io/kube-scheduler/extender/v1`, types.go).

The structs have no json tags, so the JSON keys are the Go field names: `ExtenderArgs{Pod,
Nodes, NodeNames}`, `HostPriority{Host, Score}`, `ExtenderFilterResult{Nodes, NodeNames,
FailedNodes, FailedAndUnresolvableNodes, Error}`. The objects inside (`v1.Pod`, `v1.NodeList`)
keep their usual camelCase JSON. Go marshals a nil pointer as `null`: an extender configured
with `nodeCacheCapable: true` receives `"Nodes": null` and a list in `NodeNames`, otherwise the
reverse, and kube-scheduler's HTTPExtender reads the filter result from the same field it sent
(`NodeNames` when node-cache capable, else `Nodes`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MIN_SCORE, MAX_SCORE = 0, 10  # extenderv1.MinExtenderPriority, MaxExtenderPriority


class BadRequest(ValueError):
    """The body has no readable candidate list, so there is nothing to score: answered with HTTP
    400 and the reason in `Error` (kube-scheduler never sends such a body; with `ignorable:
    true` it would schedule without us). Anything with readable candidates gets an answer."""


@dataclass(frozen=True)
class ExtenderArgs:
    pod: Mapping[str, Any]  # {} when the request's Pod is unreadable (see pod_error)
    names: list[str]  # the candidate node names, in the order sent
    nodes: list[Mapping[str, Any]] | None  # the full Node objects, when not node-cache capable
    pod_error: str | None = None  # why the Pod is unreadable: the answer is neutral then

    @property
    def node_cache_capable(self) -> bool:
        return self.nodes is None


def parse_args(body: bytes) -> ExtenderArgs:
    """Decode an ExtenderArgs; raises BadRequest naming what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadRequest("body is not a JSON object (ExtenderArgs)")
    pod, pod_error = data.get("Pod"), None
    if not isinstance(pod, dict):
        pod, pod_error = {}, "ExtenderArgs.Pod is missing or not an object"
    names, nodes = data.get("NodeNames"), data.get("Nodes")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequest("ExtenderArgs.NodeNames is not a list of names")
        return ExtenderArgs(pod=pod, names=list(names), nodes=None, pod_error=pod_error)
    if nodes is not None:
        items = nodes.get("items") if isinstance(nodes, dict) else None
        if items is None and isinstance(nodes, dict):
            items = []  # an empty NodeList marshals its nil items as null or leaves them out
        if not isinstance(items, list) or not all(isinstance(n, dict) for n in items):
            raise BadRequest("ExtenderArgs.Nodes is not a NodeList")
        names = [str((n.get("metadata") or {}).get("name") or "") for n in items]
        return ExtenderArgs(pod=pod, names=names, nodes=items, pod_error=pod_error)
    raise BadRequest("ExtenderArgs has neither NodeNames nor Nodes")


def host_priority_list(names: Sequence[str], scores: Sequence[int]) -> list[dict[str, Any]]:
    """`HostPriorityList`: one `{"Host", "Score"}` per candidate, in the order received."""
    return [{"Host": name, "Score": int(score)} for name, score in zip(names, scores, strict=True)]


def filter_result(
    args: ExtenderArgs, passing: Sequence[int], failed: Mapping[str, str]
) -> dict[str, Any]:
    """`ExtenderFilterResult` for the candidates at the `passing` positions, answered in the
    same field the request used; `failed` maps each removed node to why."""
    if args.nodes is None:
        nodes, names = None, [args.names[i] for i in passing]
    else:
        items = [args.nodes[i] for i in passing]
        nodes, names = {"apiVersion": "v1", "kind": "NodeList", "items": items}, None
    return {
        "Nodes": nodes,
        "NodeNames": names,
        "FailedNodes": dict(failed),
        "FailedAndUnresolvableNodes": {},
        "Error": "",
    }


def filter_error(message: str) -> dict[str, Any]:
    """The filter answer to a request that cannot be read: kube-scheduler reports `Error`
    (and skips the extender when it is `ignorable`)."""
    return {
        "Nodes": None,
        "NodeNames": None,
        "FailedNodes": {},
        "FailedAndUnresolvableNodes": {},
        "Error": message,
    }
