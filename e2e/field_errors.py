"""
Validation failures worded the way the Kubernetes API server words them.

kubectl prints what the server says, so the emulator says it with the same words:

* ``FieldError`` is apimachinery's ``field.Error`` (``util/validation/field/errors.go``):
  ``spec.maxNodes: Invalid value: 0: spec.maxNodes in body should be greater than or
  equal to 1``;
* :func:`from_schema_error` maps a ``jsonschema`` error to the field error that
  kube-openapi's validator and apiextensions' ``kubeOpenAPIResultToFieldErrors`` produce
  (``pkg/apiserver/validation/validation.go``), messages from kube-openapi's
  ``pkg/validation/errors/schema.go``;
* :func:`from_rule_failure` is a failed CEL rule, as in apiextensions'
  ``pkg/apiserver/schema/cel/validation.go`` (``fieldPath``, ``reason``, value omitted for
  objects and arrays);
* :func:`invalid` and :func:`bad_request` are the ``Status`` errors (422 ``Invalid`` with
  ``details.causes``, 400 ``BadRequest``) of apimachinery's ``api/errors``; the emulator
  answers a :class:`StatusError` as that ``Status``.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

from e2e.crd_schema import RuleFailure


class StatusError(Exception):
    """A failed request, as the ``Status`` the API server answers with."""

    def __init__(
        self, status: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.details = status, reason, message, details


class _Omit:
    """apimachinery's ``omitValue``: the error says which rule, not which value."""

    def __repr__(self) -> str:
        return "<omitted>"


OMIT = _Omit()

_TYPE_WORDS = {
    "FieldValueNotFound": "Not found",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "FieldValueTypeInvalid": "Invalid value",
}
#: Types whose body never shows the value (apimachinery's ErrorBody).
_VALUELESS = {"FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong"}
#: Schema failures that keep the CEL rules from running (apiextensions' hasBlockingErr).
BLOCKING = {
    "FieldValueNotSupported",
    "FieldValueRequired",
    "FieldValueTooLong",
    "FieldValueTooMany",
    "FieldValueTypeInvalid",
}
NOT_CHECKED = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)


@dataclass(frozen=True)
class FieldError:
    """One failure at one field, as apimachinery's ``field.Error``."""

    type: str  # a CauseType, e.g. FieldValueInvalid
    field: str  # e.g. spec.workload.taskClasses[0].cpu
    value: Any = OMIT
    detail: str = ""

    def body(self) -> str:
        """The message without the field: ``Invalid value: 0: ...``."""
        words = _TYPE_WORDS.get(self.type, self.type)
        text = words if self.type in _VALUELESS or self.value is OMIT else f"{words}: "
        if text.endswith(": "):
            text += go_value(self.value)
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def go_value(value: Any) -> str:
    """A bad value as Go's ``ErrorBody`` prints it: strings quoted, numbers bare, else JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return go_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def go_number(value: float) -> str:
    """A number as Go's ``%v`` prints it (``1`` for 1.0, ``0.05``, ``1e+21``)."""
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        sign = "-" if exponent.startswith("-") else "+"
        text = f"{mantissa}e{sign}{abs(int(exponent)):02d}"
    return text


def field_path(prefix: str, parts: Iterable[Any]) -> str:
    """``spec`` + ``["x", 0, "y"]`` -> ``spec.x[0].y``."""
    path = prefix
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def json_type(value: Any) -> str:
    """The JSON type name kube-openapi reports for a value of the wrong type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def from_schema_error(error: jsonschema.ValidationError, prefix: str = "") -> list[FieldError]:
    """The field errors the API server reports for one ``jsonschema`` failure."""
    path = field_path(prefix, error.absolute_path)
    name = path or "<root>"
    kind, value, bound = error.validator, error.instance, error.validator_value
    if kind == "required":
        missing = ast.literal_eval(error.message.removesuffix(" is a required property"))
        return [FieldError("FieldValueRequired", field_path(path, [missing]), "")]
    if kind == "enum":
        allowed = ", ".join(json.dumps(v if isinstance(v, str) else json.dumps(v)) for v in bound)
        return [FieldError("FieldValueNotSupported", path, value, f"supported values: {allowed}")]
    if kind == "type":
        wanted = bound if isinstance(bound, str) else ",".join(bound)
        found = json_type(value)
        message = f'{name} in body must be of type {wanted}: "{found}"'
        return [FieldError("FieldValueTypeInvalid", path, found, message)]
    if kind == "format":
        message = f"{name} in body must be of type {bound}: {go_value(value)}"
        return [FieldError("FieldValueTypeInvalid", path, value, message)]
    if kind == "maxLength":
        unit = "byte" if bound == 1 else "bytes"
        return [FieldError("FieldValueTooLong", path, OMIT, f"may not be more than {bound} {unit}")]
    if kind in ("maxItems", "maxProperties"):
        unit = "item" if bound == 1 else "items"
        detail = f"must have at most {bound} {unit}"
        return [FieldError("FieldValueTooMany", path, len(value), detail)]
    if kind == "x-kubernetes-list-type":
        return [
            FieldError("FieldValueDuplicate", field_path(path, [i]), item)
            for i, item in _duplicates(value, error.schema)
        ]
    message = _openapi_message(kind, name, bound, value)
    shown = len(value) if kind in ("minItems", "minProperties") else value
    return [FieldError("FieldValueInvalid", path, shown, message or error.message)]


def _openapi_message(kind: str, name: str, bound: Any, value: Any) -> str | None:
    """kube-openapi's message for the checks reported as plain ``Invalid value``."""
    templates = {
        "minimum": "should be greater than or equal to {}",
        "exclusiveMinimum": "should be greater than {}",
        "maximum": "should be less than or equal to {}",
        "exclusiveMaximum": "should be less than {}",
        "multipleOf": "should be a multiple of {}",
        "minLength": "should be at least {} chars long",
        "pattern": "should match '{}'",
        "minItems": "should have at least {} items",
        "minProperties": "should have at least {} properties",
        "uniqueItems": "shouldn't contain duplicates",
    }
    if kind not in templates:
        return None
    shown = go_number(bound) if isinstance(bound, int | float) else bound
    return f"{name} in body {templates[kind].format(shown)}"


def _duplicates(items: Any, schema: dict[str, Any]) -> list[tuple[int, Any]]:
    """(index, item) of each repeated entry of a set or map-list, as listtype validation."""
    keys = schema.get("x-kubernetes-list-map-keys")
    seen: set[str] = set()
    found = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        ident = (
            json.dumps([item.get(k) for k in keys], sort_keys=True)
            if keys and isinstance(item, dict)
            else json.dumps(item, sort_keys=True)
        )
        if ident in seen:
            found.append((i, item))
        seen.add(ident)
    return found


def from_rule_failure(failure: RuleFailure, value: Any, schema_type: str | None) -> FieldError:
    """The field error of a failed CEL rule (``value`` is what ``self`` was bound to)."""
    path = field_path("", [int(p) if p.isdigit() else p for p in failure.path.split(".") if p])
    rule = failure.rule
    if failure.detail:  # the evaluation itself failed: reported at the rule's node
        return FieldError(
            "FieldValueInvalid",
            path,
            schema_type or "",
            f"{failure.detail.removeprefix('evaluation error: ')} evaluating rule: "
            f"{(rule.get('message') or rule['rule']).strip()}",
        )
    field_rel = (rule.get("fieldPath") or "").lstrip(".")
    where = field_path(path, [field_rel]) if field_rel else path
    shown = OMIT if schema_type in ("object", "array") else value
    message = failure.message
    reason = rule.get("reason")
    if reason == "FieldValueForbidden":
        return FieldError("FieldValueForbidden", where, "", message)
    if reason == "FieldValueRequired":
        return FieldError("FieldValueRequired", where, "", message)
    if reason == "FieldValueDuplicate":
        return FieldError("FieldValueDuplicate", where, shown)
    return FieldError("FieldValueInvalid", where, shown, message)


def aggregate(errors: Sequence[Any]) -> str:
    """apimachinery's aggregate error text: one message, or ``[a, b]`` without repeats."""
    messages = list(dict.fromkeys(str(e) for e in errors))
    return messages[0] if len(messages) == 1 else f"[{', '.join(messages)}]"


def invalid(kind: str, group: str, name: str, errors: Sequence[FieldError]) -> StatusError:
    """422 ``Invalid``: ``MetaPolicy.metapolicy.dev "x" is invalid: spec.maxNodes: ...``."""
    qualified = f"{kind}.{group}" if group else kind
    message = f'{qualified} "{name}" is invalid'
    if errors:
        message += f": {aggregate(errors)}"
    causes = [{"reason": e.type, "message": e.body(), "field": e.field} for e in errors]
    details = {"name": name, "group": group, "kind": kind, "causes": causes}
    details = {k: v for k, v in details.items() if v}  # Go's omitempty
    return StatusError(422, "Invalid", message, details)


def bad_request(message: str) -> StatusError:
    """400 ``BadRequest`` with the message as is (e.g. a strict decoding error on create)."""
    return StatusError(400, "BadRequest", message)


def strict_decoding(unknown: Sequence[str]) -> str:
    """``strict decoding error: unknown field "spec.a", unknown field "spec.b"``."""
    return "strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in unknown)
