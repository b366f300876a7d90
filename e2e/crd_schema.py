"""
A CRD's ``openAPIV3Schema`` applied the way the API server applies it, in one place.

Both the offline CRD tests (tests/crd) and the embedded cluster's admission import this
module, so a rule that the tests accept is exactly the rule the emulator enforces. The
structural part (translation to JSON Schema, defaulting, pruning) is the operator's own
(metapolicy_operator.crd_schema, which validates every spec with it); this module adds
:func:`cel_errors`, which evaluates every ``x-kubernetes-validations`` rule with ``celpy``
(PyPI: cel-python, a test dependency), binding ``self`` to a value typed from the schema.

Nothing here knows about HTTP or KMock; see ``e2e/admission.py`` for the request side.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from metapolicy_operator.crd_schema import (  # noqa: F401  (the whole schema API, one import)
    ENVELOPE,
    FORMATS,
    KubeValidator,
    SchemaError,
    apply_defaults,
    node_at,
    prune,
    schema_errors,
    to_json_schema,
    validator,
    walk_schema,
)

try:
    import celpy  # PyPI: cel-python
except ImportError:  # pragma: no cover - cel-python is in the test extras
    celpy = None

#: Whether CEL rules can be evaluated here (cel-python installed).
HAVE_CEL = celpy is not None


# --------------------------------------------------------------------------------------
# CEL (x-kubernetes-validations) with celpy
# --------------------------------------------------------------------------------------


@functools.cache
def compile_rule(rule: str) -> Any:
    """The compiled CEL program of one rule (raises ``celpy.CELParseError`` if it is bad)."""
    if celpy is None:  # pragma: no cover
        raise RuntimeError("CEL rules need cel-python (pip install cel-python)")
    env = celpy.Environment()
    return env.program(env.compile(rule))


def to_cel(value: Any, node: dict[str, Any]) -> Any:
    """JSON value -> CEL value typed by the schema, as the API server binds ``self``.

    integer -> int, number -> double (also for integral JSON numbers), date-time strings ->
    timestamp, objects keep only the fields their schema declares (the rest is pruned or
    inaccessible to CEL).
    """
    from celpy import celtypes

    t = node.get("type")
    if isinstance(value, dict):
        props = node.get("properties")
        if props is not None:
            items = {k: to_cel(v, props[k]) for k, v in value.items() if k in props}
        elif isinstance(node.get("additionalProperties"), dict):
            extra = node["additionalProperties"]
            items = {k: to_cel(v, extra) for k, v in value.items()}
        else:
            items = {}
        return celtypes.MapType({celtypes.StringType(k): v for k, v in items.items()})
    if isinstance(value, list):
        return celtypes.ListType([to_cel(v, node.get("items", {})) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if t == "number" and isinstance(value, int | float):
        return celtypes.DoubleType(float(value))
    if (t == "integer" or node.get("x-kubernetes-int-or-string")) and isinstance(value, int):
        return celtypes.IntType(value)  # int-or-string binds as whichever it holds
    if isinstance(value, str):
        if node.get("format") == "date-time":
            return celtypes.TimestampType(value)
        return celtypes.StringType(value)
    raise TypeError(f"cannot bind {value!r} for schema type {t!r}")


def eval_rule(rule: str, value: Any, node: dict[str, Any]) -> tuple[bool, str]:
    """Evaluate one rule with ``self`` bound to ``value``. An evaluation error is a failure,
    as it is for the API server; the second item then says why."""
    try:
        result = compile_rule(rule).evaluate({"self": to_cel(value, node)})
    except celpy.CELEvalError as exc:
        return False, f"evaluation error: {exc.args[0] if exc.args else exc}"
    except TypeError as exc:
        return False, f"evaluation error: {exc}"
    if isinstance(result, celpy.CELEvalError):
        return False, f"evaluation error: {result}"
    return bool(result), ""


class RuleFailure(NamedTuple):
    """A failed ``x-kubernetes-validations`` rule: where, which, and the message."""

    path: str  # of the value the rule is on; list indexes are numbers (``spec.x.0``)
    rule: dict[str, Any]  # the entry of x-kubernetes-validations (rule, message, fieldPath...)
    message: str  # the rule's message, plus why when the evaluation itself failed
    detail: str = ""  # why the evaluation failed ("" when the rule was simply false)


def cel_errors(value: Any, node: dict[str, Any], path: str = "") -> list[RuleFailure]:
    """
    Every failing rule under ``node``, in document order.

    Transition rules (those using ``oldSelf``) are skipped, as on create.
    """
    errors: list[RuleFailure] = []
    for rule in node.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        ok, detail = eval_rule(rule["rule"], value, node)
        if not ok:
            message = f"{rule_message(rule)} {detail}".strip()
            errors.append(RuleFailure(path, rule, message, detail))

    def sub_path(key: object) -> str:
        return f"{path}.{key}" if path else str(key)

    if isinstance(value, dict):
        props = node.get("properties")
        if props is not None:
            for k, v in value.items():
                if k in props:
                    errors += cel_errors(v, props[k], sub_path(k))
        elif isinstance(node.get("additionalProperties"), dict):
            for k, v in value.items():
                errors += cel_errors(v, node["additionalProperties"], sub_path(k))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, v in enumerate(value):
            errors += cel_errors(v, node["items"], sub_path(i))
    return errors


def rule_message(rule: dict[str, Any]) -> str:
    """The message the API server reports for a failed rule."""
    message = (rule.get("message") or "").strip()
    return message or f"failed rule: {rule['rule'].strip()}"


def has_rules(node: dict[str, Any]) -> bool:
    """Whether any node of the schema carries CEL rules."""
    return any("x-kubernetes-validations" in n for _, n in walk_schema(node))
