"""
The cluster as the policy sees it: Kubernetes Node objects turned into ``NodeProfile``\\ s.

Everything here is a pure function of plain mappings (what the API returns, or kopf's
``body``), so the operator can keep a kopf index of nodes and recompute the inventory
whenever that index changes, and tests need no cluster.

Bad node data is never fatal for the operator: a node whose resources cannot be read
is left out, and a node whose latency annotation cannot be read gets a default. Both
come back as ``NodeIssue``\\ s so the operator can surface them (condition + Event)
instead of failing the whole policy because of one odd node.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import Any

from metapolicy.cluster import InvalidNodeProfile, NodeProfile
from metapolicy_operator.objects import dig

LATENCY_ANNOTATION = "metapolicy.dev/latency-ms"
#: Used when a node has no latency annotation, or one that is not a number >= 0.
DEFAULT_LATENCY_MS = 10.0
ZONE_LABEL = "topology.kubernetes.io/zone"

#: Taint keys that mean "this node is about to be removed": placing work there is wasted.
#: cluster-autoscaler: ToBeDeletedByClusterAutoscaler (NoSchedule) before it drains a node.
#: Karpenter v1: karpenter.sh/disrupted (NoSchedule); v0.32-v0.37 used
#: karpenter.sh/disruption=disrupting:NoSchedule.
REMOVAL_TAINTS = (
    "ToBeDeletedByClusterAutoscaler",
    "karpenter.sh/disrupted",
    "karpenter.sh/disruption",
)
_REMOVER = {
    "ToBeDeletedByClusterAutoscaler": "cluster-autoscaler",
    "karpenter.sh/disrupted": "Karpenter",
    "karpenter.sh/disruption": "Karpenter",
}

_UNNAMED = "<unnamed>"


# --------------------------------------------------------------------------- quantities


class QuantityError(ValueError):
    """A resource quantity that is not valid Kubernetes syntax, or not a usable amount."""


# The grammar of k8s.io/apimachinery/pkg/api/resource.Quantity (quantity.go, suffix.go):
#   <quantity> ::= <sign>? <number> <suffix>
#   <number>   ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
#   <suffix>   ::= <binarySI> | <decimalSI> | <decimalExponent>
#   <binarySI> ::= Ki | Mi | Gi | Ti | Pi | Ei
#   <decimalSI> ::= n | u | m | "" | k | M | G | T | P | E      (no "K": 1k = 1000, 1Ki = 1024)
#   <decimalExponent> ::= e <sign>?<digits> | E <sign>?<digits>  ("1E" alone is exa)
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<suffix>[KMGTPE]i|[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?"
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# Wide enough that any exponent a float can hold is computed exactly, then rounded once.
_EXACT = Context(prec=60, Emax=10**9, Emin=-(10**9))
_MIB = 2**20


def parse_quantity(quantity: str | int | float) -> float:
    """
    A Kubernetes quantity in base units (cores, bytes) as a float.

    Parsed as a decimal first so that e.g. "16G" / 2**20 has a single rounding, not
    one per suffix step. Negative, NaN and infinite amounts are rejected: no node
    resource can be any of them. Zero is a valid quantity and is returned as 0.0.
    """
    if isinstance(quantity, bool) or not isinstance(quantity, str | int | float):
        raise QuantityError(f"quantity {quantity!r} is not a string or a number")
    if isinstance(quantity, str):
        match = _QUANTITY.fullmatch(quantity)
        if match is None:
            raise QuantityError(f"{quantity!r} is not a Kubernetes quantity (e.g. 500m, 16Gi, 1e9)")
        try:
            amount = Decimal(match["number"])
            if match["exponent"] is not None:
                amount = amount.scaleb(int(match["exponent"]), _EXACT)
            elif match["suffix"] in _BINARY:
                amount = _EXACT.multiply(amount, Decimal(2 ** _BINARY[match["suffix"]]))
            else:
                amount = amount.scaleb(_DECIMAL[match["suffix"] or ""], _EXACT)
        except (ArithmeticError, InvalidOperation):
            raise QuantityError(f"quantity {quantity!r} is out of range") from None
        value = float(amount)
    else:
        try:
            value = float(quantity)
        except OverflowError:
            raise QuantityError(f"quantity {quantity!r} is out of range") from None
    if not math.isfinite(value):
        raise QuantityError(f"quantity {quantity!r} is not finite")
    if value < 0:
        raise QuantityError(f"quantity {quantity!r} is negative")
    return value + 0.0  # "-0" is a valid quantity: report it as 0.0, not -0.0


def parse_cpu(quantity: str | int | float) -> float:
    """CPU cores: "500m" -> 0.5, "2" -> 2.0, "250000u" -> 0.25."""
    return parse_quantity(quantity)


def parse_memory_mib(quantity: str | int | float) -> float:
    """Memory in MiB: "16Gi" -> 16384.0, "16G" -> 16e9 / 2**20, bare numbers are bytes."""
    return parse_quantity(quantity) / _MIB


# --------------------------------------------------------------------------- issues


@dataclass(frozen=True)
class NodeIssue:
    """A problem with one node's data, to report on the policy; never fatal to the policy."""

    node: str
    field: str  # e.g. "annotation metapolicy.dev/latency-ms", "status.allocatable.cpu"
    value: str  # the offending raw value, "" when missing
    message: str  # what was wrong, and what default was used or that the node is skipped


# --------------------------------------------------------------------------- node access


def _name(node: Mapping[str, Any]) -> str:
    name = dig(node, "metadata", "name")
    return name if isinstance(name, str) and name else _UNNAMED


def _labels(node: Mapping[str, Any]) -> Mapping[str, str]:
    labels = dig(node, "metadata", "labels")
    return labels if isinstance(labels, Mapping) else {}


def _is_ready(node: Mapping[str, Any]) -> bool:
    conditions = dig(node, "status", "conditions")
    if not isinstance(conditions, list):
        return False
    for condition in conditions:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _removal_taint(node: Mapping[str, Any]) -> str | None:
    taints = dig(node, "spec", "taints")
    if not isinstance(taints, list):
        return None
    for taint in taints:
        key = taint.get("key") if isinstance(taint, Mapping) else None
        if key in REMOVAL_TAINTS:
            return key
    return None


# --------------------------------------------------------------------------- eligibility


def eligibility(node: Mapping[str, Any]) -> tuple[bool, str]:
    """
    Whether the policy may place onto this node, and why (or why not).

    The checks run from "most final" to "most transient", so the reason names what
    matters most: a node being deleted is usually also cordoned and soon NotReady.
    Taints other than the removal ones are left to the tasks' tolerations.
    """
    if dig(node, "metadata", "deletionTimestamp"):
        return False, "being deleted"
    taint = _removal_taint(node)
    if taint is not None:
        return False, f"tainted for removal by {_REMOVER[taint]} ({taint})"
    if dig(node, "spec", "unschedulable") is True:
        return False, "unschedulable (cordoned)"
    if not _is_ready(node):
        return False, "not Ready"
    return True, "ready"


# --------------------------------------------------------------------------- selectors


class SelectorError(ValueError):
    """A label selector that Kubernetes itself would reject (e.g. an unknown operator)."""


def matches_selector(labels: Mapping[str, str] | None, selector: Mapping[str, Any] | None) -> bool:
    """
    Standard ``LabelSelector`` semantics: every matchLabels pair AND every expression.

    ``None`` and ``{}`` select everything. NotIn and DoesNotExist hold when the key is
    absent, as in Kubernetes. An unknown operator raises ``SelectorError`` rather than
    silently selecting all or no nodes.
    """
    labels = labels or {}
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or ():
        if not _matches_expression(labels, expression):
            return False
    return True


def _matches_expression(labels: Mapping[str, str], expression: Mapping[str, Any]) -> bool:
    key = expression.get("key")
    operator = expression.get("operator")
    values = expression.get("values") or ()
    if not isinstance(key, str) or not key:
        raise SelectorError(f"selector expression {dict(expression)!r} has no key")
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    raise SelectorError(
        f"selector operator {operator!r} for key {key!r} is not one of In, NotIn, Exists, "
        "DoesNotExist"
    )


# --------------------------------------------------------------------------- profiles


def _resource(
    node: Mapping[str, Any], resource: str, parse: Callable[[Any], float]
) -> tuple[float | None, NodeIssue | None]:
    """One resource from status.allocatable, or status.capacity when allocatable lacks it."""
    name = _name(node)
    for source in ("allocatable", "capacity"):
        raw = dig(node, "status", source, resource)
        if raw is None:
            continue
        field = f"status.{source}.{resource}"
        try:
            value = parse(raw)
        except QuantityError as error:
            return None, NodeIssue(
                name, field, str(raw), f"node {name}: {field}: {error}; the node is skipped"
            )
        if value <= 0:
            return None, NodeIssue(
                name, field, str(raw), f"node {name}: {field}={raw!r} is zero; the node is skipped"
            )
        return value, None
    field = f"status.allocatable.{resource}"
    message = (
        f"node {name}: neither status.allocatable.{resource} nor status.capacity.{resource} "
        "is set; the node is skipped"
    )
    return None, NodeIssue(name, field, "", message)


def _latency(node: Mapping[str, Any]) -> tuple[float, NodeIssue | None]:
    """The latency annotation in ms; the default (and an issue) when it is unusable."""
    raw = dig(node, "metadata", "annotations", LATENCY_ANNOTATION)
    if raw is None:
        return DEFAULT_LATENCY_MS, None
    try:
        latency = float(raw)
    except (TypeError, ValueError):
        problem = "is not a number"
    else:
        if not math.isfinite(latency):
            problem = "is not finite"
        elif latency < 0:
            problem = "is negative"
        else:
            return latency, None
    name = _name(node)
    message = (
        f"node {name}: annotation {LATENCY_ANNOTATION}={raw!r} {problem}; "
        f"using the default {DEFAULT_LATENCY_MS} ms"
    )
    return DEFAULT_LATENCY_MS, NodeIssue(
        name, f"annotation {LATENCY_ANNOTATION}", str(raw), message
    )


def node_profile(node: Mapping[str, Any]) -> tuple[NodeProfile | None, list[NodeIssue]]:
    """
    The policy's view of one node, and the problems found reading it.

    Missing or unreadable cpu/memory make the node unusable (``None``): guessing a
    size would let the policy overload it. A bad latency only skews placement, so it
    falls back to ``DEFAULT_LATENCY_MS``. A missing annotation is normal, not an issue.
    """
    name = _name(node)
    if name == _UNNAMED:
        raw = dig(node, "metadata", "name")
        message = "a node without metadata.name cannot be placed onto; it is skipped"
        return None, [NodeIssue(name, "metadata.name", "" if raw is None else str(raw), message)]
    cpu, cpu_issue = _resource(node, "cpu", parse_cpu)
    memory, memory_issue = _resource(node, "memory", parse_memory_mib)
    latency, latency_issue = _latency(node)
    issues = [i for i in (cpu_issue, memory_issue, latency_issue) if i is not None]
    if cpu is None or memory is None:
        return None, issues
    zone = _labels(node).get(ZONE_LABEL) or None
    try:
        profile = NodeProfile(name=name, cpu=cpu, memory_mib=memory, latency_ms=latency, zone=zone)
    except InvalidNodeProfile as error:
        issues.append(NodeIssue(name, "metadata.name", name, f"{error}; the node is skipped"))
        return None, issues
    return profile, issues


def eligible_profiles(
    nodes: Iterable[Mapping[str, Any]], selector: Mapping[str, Any] | None
) -> tuple[list[NodeProfile], list[NodeIssue], dict[str, str]]:
    """
    The nodes the policy may place onto: (profiles by name, issues, {excluded: reason}).

    Only nodes matching ``selector`` are considered. Every selected node ends up either
    in the profiles or in the reasons map, so "selected but unused" is always explained;
    a node whose data cannot be read is excluded with reason "invalid node data" and its
    issues. Ineligible nodes are not read further, so a node on its way out does not
    raise issues about its data.
    """
    profiles: dict[str, NodeProfile] = {}
    issues: list[NodeIssue] = []
    reasons: dict[str, str] = {}
    for node in nodes:
        if not matches_selector(_labels(node), selector):
            continue
        name = _name(node)
        if name in profiles or name in reasons:
            # check_unique would reject the whole cluster; one stray copy should not.
            message = f"node {name} appears twice in the inventory; the later copy is ignored"
            issues.append(NodeIssue(name, "metadata.name", name, message))
            continue
        eligible, reason = eligibility(node)
        if not eligible:
            reasons[name] = reason
            continue
        profile, node_issues = node_profile(node)
        issues.extend(node_issues)
        if profile is None:
            latency_field = f"annotation {LATENCY_ANNOTATION}"  # defaulted, never fatal
            fields = ", ".join(i.field for i in node_issues if i.field != latency_field)
            reasons[name] = f"invalid node data ({fields})"
        else:
            profiles[name] = profile
    return [profiles[name] for name in sorted(profiles)], issues, reasons
