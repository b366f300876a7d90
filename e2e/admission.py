"""
Admission of custom resources with their CRD's own ``openAPIV3Schema``.

What the API server does to a custom resource on its way to storage, in its order
(apiextensions-apiserver ``customresource_handler.go`` decoding, then the strategy's
validation): prune the fields the schema does not declare (an error under
``fieldValidation=Strict``, a ``Warning`` under ``Warn``, the server's default), apply the
structural defaults, validate against the schema, then run the CEL rules unless a
blocking error came first. A rejected object raises a ``Status`` error worded as the
server words it (``e2e/field_errors.py``).

The main resource and the ``status`` subresource are validated separately: a write to
one never fails for the other's content. An update that leaves the validated part as it
was is accepted as is (the server's validation ratcheting, whole-part only), so kopf can
always add its finalizer or annotations to an object stored under an older schema.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from e2e import crd_schema
from e2e.field_errors import (
    BLOCKING,
    NOT_CHECKED,
    FieldError,
    bad_request,
    from_rule_failure,
    from_schema_error,
    invalid,
    strict_decoding,
)

Scope = Literal["main", "status"]
Operation = Literal["create", "update", "patch"]
DIRECTIVES = ("Ignore", "Warn", "Strict")

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    f"regex used for validation is '{_DNS_SUBDOMAIN.pattern}')"
)
_MISSING = object()


@dataclass
class Admitted:
    """The object as it will be stored, and the warnings for the client."""

    object: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def version_schema(crd: Mapping[str, Any], api_version: str | None) -> dict[str, Any] | None:
    """The ``openAPIV3Schema`` of the object's version (the storage version if unknown)."""
    versions = crd.get("spec", {}).get("versions", [])
    wanted = (api_version or "").rpartition("/")[2]
    chosen = next((v for v in versions if v.get("name") == wanted), None)
    chosen = chosen or next((v for v in versions if v.get("storage")), None)
    return ((chosen or {}).get("schema") or {}).get("openAPIV3Schema")


def default(crd: Mapping[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """Structural defaulting alone, in place (the server also defaults what it reads)."""
    schema = version_schema(crd, obj.get("apiVersion"))
    return crd_schema.apply_defaults(obj, schema) if schema else obj


def admit(
    crd: Mapping[str, Any],
    obj: Mapping[str, Any],
    *,
    old: Mapping[str, Any] | None = None,
    scope: Scope = "main",
    operation: Operation = "create",
    directive: str | None = None,
) -> Admitted:
    """
    Prune, default and validate ``obj`` (a create, or the result of an update/patch).

    ``scope`` says which part the request may change: the main resource (everything but
    status) or the status subresource. ``directive`` is the request's ``fieldValidation``
    (``Warn`` when absent, as on the server). Raises ``StatusError`` (400 or 422).
    """
    spec = crd["spec"]
    kind, group = spec["names"]["kind"], spec["group"]
    name = (obj.get("metadata") or {}).get("name") or ""
    directive = directive or "Warn"
    if directive not in DIRECTIVES:
        raise bad_request(
            f'fieldValidation: Unsupported value: "{directive}": '
            'supported values: "Ignore", "Strict", "Warn"'
        )
    result = Admitted(copy.deepcopy(dict(obj)))
    schema = version_schema(crd, obj.get("apiVersion"))
    if schema is None:
        return result

    sent = json.dumps(result.object, separators=(",", ":")) if directive == "Strict" else ""
    with _part(result.object, scope) as part:
        node, prefix = _node(schema, scope)
        unknown = [] if part is _MISSING else crd_schema.prune(part, node, prefix)
    if unknown and directive == "Strict":
        text = strict_decoding(unknown)
        if operation == "patch":
            raise invalid("", "", "", [FieldError("FieldValueInvalid", "patch", sent, text)])
        version = obj.get("apiVersion", "").rpartition("/")[2]
        raise bad_request(f'{kind} in version "{version}" cannot be handled as a {kind}: {text}')
    if directive == "Warn":
        result.warnings += [f'unknown field "{path}"' for path in unknown]

    crd_schema.apply_defaults(result.object, schema)
    if old is not None and _unchanged(result.object, old, schema, scope):
        return result

    errors = _validate(result.object, schema, scope)
    if operation == "create" and (not _DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253):
        errors.insert(0, FieldError("FieldValueInvalid", "metadata.name", name, _name_detail(name)))
    if errors:
        raise invalid(kind, group, name, errors)
    return result


def _name_detail(name: str) -> str:
    return "must be no more than 253 characters" if len(name) > 253 else _DNS_SUBDOMAIN_MESSAGE


def _node(schema: dict[str, Any], scope: Scope) -> tuple[dict[str, Any], str]:
    if scope == "status":
        return schema.get("properties", {}).get("status", {}), "status"
    return schema, ""


class _part:
    """The part of the object a scope validates: status, or everything but status."""

    def __init__(self, obj: dict[str, Any], scope: Scope) -> None:
        self.obj, self.scope = obj, scope
        self.status: Any = _MISSING

    def __enter__(self) -> Any:
        if self.scope == "status":
            return self.obj.get("status", _MISSING)
        self.status = self.obj.pop("status", _MISSING)
        return self.obj

    def __exit__(self, *_: object) -> None:
        if self.status is not _MISSING:
            self.obj["status"] = self.status


def _unchanged(
    new: dict[str, Any], old: Mapping[str, Any], schema: dict[str, Any], scope: Scope
) -> bool:
    before = crd_schema.apply_defaults(copy.deepcopy(dict(old)), schema)
    if scope == "status":
        return new.get("status") == before.get("status")
    ignored = ("metadata", "status")
    return {k: v for k, v in new.items() if k not in ignored} == {
        k: v for k, v in before.items() if k not in ignored
    }


def _validate(obj: dict[str, Any], schema: dict[str, Any], scope: Scope) -> list[FieldError]:
    node, prefix = _node(schema, scope)
    with _part(obj, scope) as part:
        if part is _MISSING:
            return []
        errors = [
            failure
            for error in crd_schema.schema_errors(part, node)
            for failure in from_schema_error(error, prefix)
        ]
        if not crd_schema.HAVE_CEL or not crd_schema.has_rules(node):
            return errors
        if any(e.type in BLOCKING for e in errors):
            return [*errors, FieldError("FieldValueInvalid", "<nil>", None, NOT_CHECKED)]
        for failure in crd_schema.cel_errors(part, node, prefix):
            value, at = _lookup(part, node, failure.path.removeprefix(prefix).strip("."))
            errors.append(from_rule_failure(failure, value, at.get("type")))
    return errors


def _lookup(value: Any, node: dict[str, Any], path: str) -> tuple[Any, dict[str, Any]]:
    """The value and schema node at a dotted path with numeric list indexes."""
    for part in filter(None, path.split(".")):
        if isinstance(value, list):
            value, node = value[int(part)], node.get("items", {})
        else:
            props = node.get("properties")
            sub = props.get(part) if props is not None else node.get("additionalProperties")
            value, node = value[part], sub if isinstance(sub, dict) else {}
    return value, node
