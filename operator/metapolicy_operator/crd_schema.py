"""A CRD's ``openAPIV3Schema`` applied the way the API server applies it: translation to JSON
Schema, structural defaulting and pruning.

The operator validates every MetaPolicy spec with it (so defaults and ranges are written once,
in the CRD), and the embedded cluster's admission and the CRD tests use the same functions
(e2e/crd_schema.py adds the CEL rules there):

* :func:`to_json_schema` translates the Kubernetes structural dialect of OpenAPI v3 to
  JSON Schema 2020-12 for the ``jsonschema`` library (unknown fields are errors there, as
  with strict field validation; :func:`prune` drops them first where the server would);
* :func:`apply_defaults` is structural defaulting (absent fields of objects that exist,
  defaults applied before recursing, non-nullable nulls treated as absent);
* :func:`prune` drops the fields the schema does not declare and says which ones.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import jsonschema
import yaml

#: The CRD, shipped inside the package (a link to crds/metapolicy.yaml in the repository).
CRD_RESOURCE = ("metapolicy_operator", "crd/metapolicy.yaml")


@functools.cache
def crd() -> dict[str, Any]:
    """The MetaPolicy CustomResourceDefinition this operator was built with."""
    package, name = CRD_RESOURCE
    return yaml.safe_load(resources.files(package).joinpath(name).read_text())


def spec_schema() -> dict[str, Any]:
    """The structural schema of a MetaPolicy's spec (the storage version's)."""
    version = next(v for v in crd()["spec"]["versions"] if v.get("storage"))
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def leaf_defaults(node: dict[str, Any]) -> dict[str, Any]:
    """The schema's defaults as a tree shaped like the objects (what an empty spec becomes)."""
    found: dict[str, Any] = {}
    for name, prop in node.get("properties", {}).items():
        if prop.get("type") == "object" and "properties" in prop:
            nested = leaf_defaults(prop)
            if nested:
                found[name] = nested
        elif "default" in prop:
            found[name] = prop["default"]
    return found


class SchemaError(ValueError):
    """The schema uses a keyword this translation does not know (often a typo)."""


def walk_schema(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with a readable path (``[]`` = array items, ``{}`` = map values)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk_schema(sub, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from walk_schema(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk_schema(node["additionalProperties"], f"{path}{{}}")
    for key in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(key, [])):
            yield from walk_schema(sub, f"{path}<{key}{i}>")


def node_at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    """The schema node at a path like ``spec.workload.taskClasses[].cpu`` ("" is the root)."""
    node = schema
    for part in filter(None, dotted.split(".")):
        is_list = part.endswith("[]")
        node = node["properties"][part.removesuffix("[]")]
        if is_list:
            node = node["items"]
    return node


# --------------------------------------------------------------------------------------
# OpenAPI v3 (Kubernetes structural dialect) -> JSON Schema 2020-12
# --------------------------------------------------------------------------------------

# Keys copied as they are: their meaning is the same in both dialects.
_PLAIN_KEYS = {
    "type",
    "enum",
    "minimum",
    "maximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
    "format",
    "default",
    "description",
    "title",
    "example",
}
# Kubernetes extensions that do not constrain the value (or are checked elsewhere).
_DROPPED_KEYS = {
    "x-kubernetes-validations",  # CEL, see cel_errors()
    "x-kubernetes-preserve-unknown-fields",  # handled through additionalProperties
    "x-kubernetes-embedded-resource",
    "x-kubernetes-map-type",
    "x-kubernetes-list-map-keys",  # read together with x-kubernetes-list-type
    "x-kubernetes-int-or-string",  # handled below
    "nullable",  # handled below
    "exclusiveMinimum",  # handled below
    "exclusiveMaximum",  # handled below
}
_LOGIC_KEYS = {"allOf", "anyOf", "oneOf", "not"}
_STRUCTURE_KEYS = {"properties", "items", "additionalProperties", "x-kubernetes-list-type"}


def to_json_schema(node: dict[str, Any], path: str = "<root>") -> dict[str, Any]:
    """Translate one structural-schema node; an unknown keyword raises :class:`SchemaError`."""
    unknown = set(node) - _PLAIN_KEYS - _DROPPED_KEYS - _LOGIC_KEYS - _STRUCTURE_KEYS
    if unknown:
        raise SchemaError(f"{path}: keywords the translation does not know: {sorted(unknown)}")

    out = {k: copy.deepcopy(v) for k, v in node.items() if k in _PLAIN_KEYS}

    # OpenAPI 3.0 spells exclusive bounds as booleans next to minimum/maximum.
    for bound, excl in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(excl):
            out[excl] = out.pop(bound)

    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]

    if "properties" in node:
        out["properties"] = {
            k: to_json_schema(v, f"{path}.{k}") for k, v in node["properties"].items()
        }
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"], f"{path}{{}}")
    elif "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        # Strict field validation: a field the schema does not know is an error.
        out["additionalProperties"] = False
    if "items" in node:
        out["items"] = to_json_schema(node["items"], f"{path}[]")
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [to_json_schema(s, f"{path}<{key}>") for s in node[key]]
    if "not" in node:
        out["not"] = to_json_schema(node["not"], f"{path}<not>")

    list_type = node.get("x-kubernetes-list-type")
    if list_type in ("set", "map"):
        out["x-kubernetes-list-type"] = list_type
        if list_type == "map":
            out["x-kubernetes-list-map-keys"] = list(node["x-kubernetes-list-map-keys"])
    return out


def _list_type(validator: Any, list_type: str, instance: Any, schema_node: dict) -> Iterator[Any]:
    """The API server rejects duplicate set entries and duplicate map-list keys."""
    if not isinstance(instance, list):
        return
    seen: set[str] = set()
    for i, item in enumerate(instance):
        if list_type == "map":
            keys = schema_node["x-kubernetes-list-map-keys"]
            if not isinstance(item, dict):
                continue
            ident = repr(tuple(item.get(k) for k in keys))
        else:
            ident = repr(item)
        if ident in seen:
            yield jsonschema.ValidationError(
                f"duplicate entry {ident} at index {i} (x-kubernetes-list-type: {list_type})"
            )
        seen.add(ident)


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
#: The formats the API server checks (date-time); others are descriptive only.
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    dt.datetime.fromisoformat(value.upper())
    return True


#: Draft 2020-12 plus ``x-kubernetes-list-type`` (duplicates in sets and map-lists).
KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-type": _list_type}
)


def validator(node: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A (cached) validator for one schema node; the cache key is the node's content."""
    return _validator(json.dumps(node, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _validator(node_json: str) -> jsonschema.protocols.Validator:
    js = to_json_schema(json.loads(node_json))
    KubeValidator.check_schema(js)
    return KubeValidator(js, format_checker=FORMATS)


def schema_errors(value: Any, node: dict[str, Any]) -> list[jsonschema.ValidationError]:
    """Errors of ``value`` against one schema node, in path order."""
    return sorted(validator(node).iter_errors(value), key=lambda e: [str(p) for p in e.path])


# --------------------------------------------------------------------------------------
# Defaulting and pruning, as the API server does them
# --------------------------------------------------------------------------------------


def apply_defaults(value: Any, node: dict[str, Any]) -> Any:
    """Fill absent fields of existing objects with their ``default``, then recurse (in place).

    Mirrors structural defaulting: a field whose value is null and that is not nullable
    is treated as absent (and dropped when it has no default). Defaults are applied before
    recursing, so defaulting ``adaptation: {}`` then fills the fields inside it. Defaults
    are never applied inside ``additionalProperties`` (they are forbidden there).
    """
    if isinstance(value, dict):
        props = node.get("properties")
        if props is not None:
            for key, sub in props.items():
                absent = key not in value or (value[key] is None and not sub.get("nullable"))
                if not absent:
                    continue
                if "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                elif key in value:
                    del value[key]
            for key, sub_value in value.items():
                if key in props:
                    apply_defaults(sub_value, props[key])
        elif isinstance(node.get("additionalProperties"), dict):
            for sub_value in value.values():
                apply_defaults(sub_value, node["additionalProperties"])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            apply_defaults(item, node["items"])
    return value


#: Root fields the API server never prunes by the schema: they are the object's envelope.
ENVELOPE = ("apiVersion", "kind", "metadata")


def prune(value: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """
    Drop, in place, every field the schema does not declare; return their paths.

    Paths read like the API server's: ``spec.foo``, ``spec.items[0].bar``. Objects under
    ``x-kubernetes-preserve-unknown-fields`` keep everything; at the root, the envelope
    (apiVersion, kind, metadata) is kept whatever the schema says.
    """
    dropped: list[str] = []
    if isinstance(value, dict):
        props = node.get("properties")
        extra = node.get("additionalProperties")
        for key in list(value):
            here = f"{path}.{key}" if path else key
            if not path and key in ENVELOPE:
                continue
            if props is not None and key in props:
                dropped += prune(value[key], props[key], here)
            elif isinstance(extra, dict):
                dropped += prune(value[key], extra, here)
            elif not node.get("x-kubernetes-preserve-unknown-fields") and (
                props is not None or extra is None
            ):
                del value[key]
                dropped.append(here)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            dropped += prune(item, node["items"], f"{path}[{i}]")
    return dropped
