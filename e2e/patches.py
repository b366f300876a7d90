"""
The PATCH bodies the API server accepts, applied to an object: one function per type.

* ``application/json-patch+json``: RFC 6902 (``jsonpatch``), ``test`` ops included;
* ``application/merge-patch+json``: RFC 7386, ``null`` deletes, lists are replaced;
* ``application/strategic-merge-patch+json`` (built-in kinds only): lists merge by their
  ``x-kubernetes-patch-merge-key`` where the schema has ``x-kubernetes-patch-strategy:
  merge``, and the directives kubectl sends are honoured (``$patch: replace|delete``,
  ``$retainKeys``, ``$deleteFromPrimitiveList/<field>``, ``$setElementOrder/<field>``);
* ``application/apply-patch+yaml`` (server-side apply): the applied configuration is
  merged in the same way. Field ownership (managedFields) is not tracked, so fields that
  a manager stops applying are kept, and there are no conflicts.

The schema comes from a resolver so this module stays independent of where the schemas
come from (``e2e/openapi.py`` for built-ins).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import jsonpatch
import yaml

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)

#: Resolves a schema node's ``$ref``/``allOf`` (identity when schemas are plain).
Resolver = Callable[[Mapping[str, Any] | None], dict[str, Any]]


class PatchError(ValueError):
    """The patch cannot be applied: 422 for a failed operation, 400 for a body not decoded."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def patch_type(content_type: str | None) -> str:
    """The media type of a Content-Type header (``application/json`` by default)."""
    return (content_type or "application/json").split(";")[0].strip().lower()


def parse_body(kind: str, text: str, data: Any) -> Any:
    """The patch body: what KMock parsed as JSON, or the YAML of an apply patch."""
    if data is not None:
        return data
    if kind == APPLY_PATCH:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise PatchError(f"error decoding YAML: {error}", 400) from error
    raise PatchError("the body of the request was not valid JSON", 400)


def apply(
    obj: Mapping[str, Any],
    patch: Any,
    kind: str,
    *,
    schema: Mapping[str, Any] | None = None,
    resolve: Resolver | None = None,
) -> dict[str, Any]:
    """The object after the patch (``obj`` itself is not changed)."""
    current = copy.deepcopy(dict(obj))
    if kind == JSON_PATCH:
        if not isinstance(patch, list):
            raise PatchError("a JSON patch must be a list of operations", 400)
        try:
            return jsonpatch.apply_patch(current, patch, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as error:
            raise PatchError(str(error)) from error
    if not isinstance(patch, dict):
        raise PatchError(f"a {kind} body must be a JSON object", 400)
    if kind == MERGE_PATCH:
        return merge(current, patch)
    if kind in (STRATEGIC_MERGE_PATCH, APPLY_PATCH):
        return strategic_merge(current, patch, schema or {}, resolve or _plain)
    raise PatchError(f"unsupported patch type {kind}", 415)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def _plain(node: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(node or {})


def strategic_merge(
    target: Any, patch: Mapping[str, Any], schema: Mapping[str, Any], resolve: Resolver
) -> Any:
    """A strategic merge patch of one object (its schema node says how lists merge)."""
    node = resolve(schema)
    if patch.get("$patch") == "replace":
        return _strip(patch)
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    props = node.get("properties") or {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field) or [] if v not in (value or [])]
            continue
        sub = resolve(props.get(key) or node.get("additionalProperties") or {})
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            merged = strategic_merge(result[key], value, sub, resolve)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, sub, resolve)
        else:
            result[key] = _strip(value)
    if isinstance(patch.get("$retainKeys"), list):
        keep = set(patch["$retainKeys"])
        result = {k: v for k, v in result.items() if k in keep}
    return result


def _merge_list(
    target: Any, patch: list[Any], node: Mapping[str, Any], resolve: Resolver
) -> list[Any]:
    strategy = node.get("x-kubernetes-patch-strategy") or ""
    current = list(target) if isinstance(target, list) else []
    if "merge" not in strategy.split(","):
        return [_strip(v) for v in patch if not (isinstance(v, dict) and v.get("$patch"))]
    key = node.get("x-kubernetes-patch-merge-key")
    if key is None:  # a list of primitives: a union, in order
        return current + [v for v in patch if v not in current]
    items_node = resolve(node.get("items") or {})
    result = list(current)
    for item in patch:
        if not isinstance(item, dict):
            continue
        index = next((i for i, c in enumerate(result) if c.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_strip(item))
        else:
            result[index] = strategic_merge(result[index], item, items_node, resolve)
    return result


def _strip(value: Any) -> Any:
    """A value without strategic-merge directives."""
    if isinstance(value, dict):
        return {
            k: _strip(v)
            for k, v in value.items()
            if not k.startswith("$") or k in ("$ref", "$schema")
        }
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value
