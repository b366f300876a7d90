"""
Server-side tables (``meta.k8s.io/v1 Table``) for ``kubectl get``.

kubectl asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and prints the
columns the server chose; without tables it can only show NAME and AGE. The columns are
the API server's:

* custom resources: ``Name`` and the CRD's ``additionalPrinterColumns`` (JSONPath on the
  object; the type decides the cell: integer, number, boolean, string, date as an age),
  or ``Name``/``Age`` without any (apiextensions' ``tableconvertor``);
* built-ins: the columns of kube-apiserver's printers (``pkg/printers/internalversion``)
  for nodes, pods, events, namespaces, configmaps and leases; ``Name``/``Created At``
  for any other kind (the default table convertor).

Priority-1 columns are always sent; ``kubectl get -o wide`` is what shows them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated."
)
AGE_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was "
    "created. It is represented in RFC3339 form and is in UTC."
)


@dataclass(frozen=True)
class Column:
    """One table column: its definition and how a cell is computed from an object."""

    name: str
    type: str
    cell: Callable[[Mapping[str, Any]], Any]
    description: str = ""
    format: str = ""
    priority: int = 0

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


def table_version(accept: str | None) -> str | None:
    """``v1`` or ``v1beta1`` if the Accept header asks for a meta.k8s.io Table first."""
    for media in (accept or "").split(","):
        params = dict(p.strip().split("=", 1) for p in media.split(";")[1:] if "=" in p)
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            if params.get("v") in ("v1", "v1beta1"):
                return params["v"]
        elif media.strip().split(";")[0] in ("application/json", "*/*", "application/*"):
            return None
    return None


def table(
    objects: Iterable[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    resource_version: str | None = None,
    include_object: str | None = None,
    version: str = "v1",
    headers: bool = True,
) -> dict[str, Any]:
    """A Table of the objects; ``include_object`` is None, Object or PartialObjectMetadata."""
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [column.cell(obj) for column in columns]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": f"meta.k8s.io/{version}",
                "metadata": obj.get("metadata", {}),
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": {"resourceVersion": resource_version or ""},
        "columnDefinitions": [c.definition() for c in columns] if headers else [],
        "rows": rows,
    }


# --------------------------------------------------------------------------------------
# Custom resources
# --------------------------------------------------------------------------------------


def custom_columns(printer_columns: Sequence[Mapping[str, Any]] | None) -> list[Column]:
    """Name plus the CRD version's additionalPrinterColumns (or Age when it has none)."""
    printer_columns = printer_columns or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ]
    columns = [Column("Name", "string", _name, NAME_DESCRIPTION, "name")]
    for spec in printer_columns:
        path = compile_jsonpath(spec["jsonPath"])
        description = spec.get("description") or (
            f"Custom resource definition column (in JSONPath format): {spec['jsonPath']}"
        )
        columns.append(
            Column(
                spec["name"],
                spec["type"],
                _json_cell(path, spec["type"]),
                description,
                spec.get("format", ""),
                spec.get("priority", 0),
            )
        )
    return columns


def _json_cell(path: JSONPath, kind: str) -> Callable[[Mapping[str, Any]], Any]:
    def cell(obj: Mapping[str, Any]) -> Any:
        found = path(obj)
        if not found:
            return None
        value = found[0]
        if kind == "string":
            return value if isinstance(value, str) else _print(value)
        return cell_for_json_value(kind, value)

    return cell


def cell_for_json_value(kind: str, value: Any) -> Any:
    """apiextensions' cellForJSONValue: the value if it fits the column type, else None."""
    if value is None or isinstance(value, bool) != (kind == "boolean"):
        return None
    if kind == "integer" and isinstance(value, int | float):
        return int(value)
    if kind == "number" and isinstance(value, int | float):
        return float(value)
    if kind in ("boolean", "string"):
        return value if isinstance(value, bool | str) else None
    if kind == "date" and isinstance(value, str):
        when = parse_time(value)
        return "<invalid>" if when is None else human_duration(_now() - when)
    return None


def _print(value: Any) -> str:
    """client-go's jsonpath printing of a non-string value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# --------------------------------------------------------------------------------------
# A JSONPath subset: what printer columns use
# --------------------------------------------------------------------------------------

JSONPath = Callable[[Any], list[Any]]
_STEP = re.compile(
    r"\.(?P<field>[A-Za-z0-9_-]+)"
    r"|\[(?P<index>-?\d+)\]"
    r"|\[\*\]|\.\*"
    r"|\['(?P<quoted>[^']*)'\]"
    r"|\[\?\(@\.(?P<key>[A-Za-z0-9_.-]+)\s*==\s*[\"'](?P<value>[^\"']*)[\"']\)\]"
)


def compile_jsonpath(expression: str) -> JSONPath:
    """``.a.b[0]``, ``.a['b.c']``, ``.a[*]``, ``.a[?(@.k=="v")].b`` (with or without braces)."""
    text = expression.strip().removeprefix("{").removesuffix("}").strip()
    steps, pos = [], 0
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None:
            raise ValueError(f"unsupported JSONPath {expression!r} at {text[pos:]!r}")
        steps.append(match)
        pos = match.end()

    def evaluate(obj: Any) -> list[Any]:
        values = [obj]
        for step in steps:
            values = [v for value in values for v in _apply(step, value)]
        return values

    return evaluate


def _apply(step: re.Match[str], value: Any) -> list[Any]:
    field = step["field"] if step["field"] is not None else step["quoted"]
    if field is not None:
        return [value[field]] if isinstance(value, dict) and field in value else []
    if step["index"] is not None:
        index = int(step["index"])
        return (
            [value[index]] if isinstance(value, list) and -len(value) <= index < len(value) else []
        )
    if step["key"] is not None:
        items = value if isinstance(value, list) else []
        return [item for item in items if _get(item, step["key"].split(".")) == step["value"]]
    return list(value.values()) if isinstance(value, dict) else list(value or [])


def _get(obj: Any, path: Sequence[str]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return None if obj is None else str(obj)


# --------------------------------------------------------------------------------------
# Built-in kinds (after kube-apiserver's pkg/printers/internalversion/printers.go)
# --------------------------------------------------------------------------------------


def builtin_columns(group: str, plural: str) -> list[Column]:
    """The server's columns for a built-in resource."""
    name = Column("Name", "string", _name, NAME_DESCRIPTION, "name")
    age = Column("Age", "string", _age, AGE_DESCRIPTION)
    key = f"{group}/{plural}" if group else plural
    if key == "nodes":
        return [
            name,
            Column("Status", "string", _node_status, "The status of the node"),
            Column("Roles", "string", _node_roles, "The roles of the node"),
            age,
            Column("Version", "string", _at("status", "nodeInfo", "kubeletVersion", default="")),
            Column("Internal-IP", "string", _node_address("InternalIP"), priority=1),
            Column("External-IP", "string", _node_address("ExternalIP"), priority=1),
            Column("OS-Image", "string", _node_info("osImage"), priority=1),
            Column("Kernel-Version", "string", _node_info("kernelVersion"), priority=1),
            Column(
                "Container-Runtime", "string", _node_info("containerRuntimeVersion"), priority=1
            ),
        ]
    if key == "pods":
        return [
            name,
            Column("Ready", "string", _pod_ready),
            Column("Status", "string", _pod_status),
            Column("Restarts", "string", _pod_restarts),
            age,
            Column("IP", "string", _at("status", "podIP", default="<none>"), priority=1),
            Column("Node", "string", _at("spec", "nodeName", default="<none>"), priority=1),
            Column(
                "Nominated Node",
                "string",
                _at("status", "nominatedNodeName", default="<none>"),
                priority=1,
            ),
            Column("Readiness Gates", "string", lambda _: "<none>", priority=1),
        ]
    if key == "events":
        return [
            Column("Last Seen", "string", _event_last_seen),
            Column("Type", "string", _at("type", default="")),
            Column("Reason", "string", _at("reason", default="")),
            Column("Object", "string", _event_object),
            Column(
                "Subobject", "string", _at("involvedObject", "fieldPath", default=""), priority=1
            ),
            Column("Source", "string", _event_source, priority=1),
            Column("Message", "string", lambda e: (e.get("message") or "").strip()),
            Column("First Seen", "string", _event_first_seen, priority=1),
            Column("Count", "string", lambda e: e.get("count") or 1, priority=1),
            Column("Name", "string", _name, NAME_DESCRIPTION, "name", priority=1),
        ]
    if key == "namespaces":
        return [name, Column("Status", "string", _at("status", "phase", default="")), age]
    if key == "configmaps":
        data = lambda c: len(c.get("data") or {}) + len(c.get("binaryData") or {})  # noqa: E731
        return [name, Column("Data", "string", data), age]
    if key == "coordination.k8s.io/leases":
        return [name, Column("Holder", "string", _at("spec", "holderIdentity", default="")), age]
    created = Column("Created At", "date", _created_at, AGE_DESCRIPTION)
    return [name, created]


def _name(obj: Mapping[str, Any]) -> str:
    return obj.get("metadata", {}).get("name", "")


def _age(obj: Mapping[str, Any]) -> str:
    return since(obj.get("metadata", {}).get("creationTimestamp"))


def _created_at(obj: Mapping[str, Any]) -> str:
    when = parse_time(obj.get("metadata", {}).get("creationTimestamp"))
    return "" if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _at(*path: str, default: Any = None) -> Callable[[Mapping[str, Any]], Any]:
    def cell(obj: Mapping[str, Any]) -> Any:
        value: Any = obj
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        return default if value in (None, "") else value

    return cell


def _node_status(node: Mapping[str, Any]) -> str:
    conditions = {c.get("type"): c for c in node.get("status", {}).get("conditions") or []}
    ready = conditions.get("Ready")
    status = [] if ready is None else ["Ready" if ready.get("status") == "True" else "NotReady"]
    status = status or ["Unknown"]
    if (node.get("spec") or {}).get("unschedulable"):
        status.append("SchedulingDisabled")
    return ",".join(status)


def _node_roles(node: Mapping[str, Any]) -> str:
    roles = set()
    for key, value in (node.get("metadata", {}).get("labels") or {}).items():
        if key.startswith("node-role.kubernetes.io/") and key.split("/", 1)[1]:
            roles.add(key.split("/", 1)[1])
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    return ",".join(sorted(roles)) or "<none>"


def _node_address(kind: str) -> Callable[[Mapping[str, Any]], str]:
    def cell(node: Mapping[str, Any]) -> str:
        for address in node.get("status", {}).get("addresses") or []:
            if address.get("type") == kind:
                return address.get("address", "")
        return "<none>"

    return cell


def _node_info(key: str) -> Callable[[Mapping[str, Any]], str]:
    return _at("status", "nodeInfo", key, default="<unknown>")


def _pod_ready(pod: Mapping[str, Any]) -> str:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or [])
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _pod_status(pod: Mapping[str, Any]) -> str:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Pending"
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
        reason = waiting.get("reason") or terminated.get("reason") or reason
    return reason


def _pod_restarts(pod: Mapping[str, Any]) -> int:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses)


def _event_object(event: Mapping[str, Any]) -> str:
    involved = event.get("involvedObject") or {}
    kind = (involved.get("kind") or "").lower()
    return f"{kind}/{involved['name']}" if involved.get("name") else kind


def _event_last_seen(event: Mapping[str, Any]) -> str:
    series = event.get("series") or {}
    return since(series.get("lastObservedTime") or event.get("lastTimestamp") or event.get(
        "eventTime"))  # fmt: skip


def _event_first_seen(event: Mapping[str, Any]) -> str:
    return since(event.get("firstTimestamp") or event.get("eventTime"))


def _event_source(event: Mapping[str, Any]) -> str:
    source = event.get("source") or {}
    component = source.get("component") or event.get("reportingComponent") or ""
    host = source.get("host") or event.get("reportingInstance") or ""
    return f"{component}, {host}" if component and host else component or host


# --------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 timestamp (as Kubernetes writes them), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def since(value: Any) -> str:
    """translateTimestampSince: the age of a timestamp, ``<unknown>`` without one."""
    when = parse_time(value)
    return "<unknown>" if when is None else human_duration(_now() - when)


def human_duration(delta: dt.timedelta) -> str:
    """apimachinery's ``duration.HumanDuration``: ~2-3 significant figures."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, days = hours // 24 // 365, (hours // 24) % 365
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{hours // 24 // 365}y"
