"""
OpenAPI v3 and v2 documents for the resources the embedded cluster serves.

kubectl reads them to decide what to do before it sends anything:

* ``kubectl apply/create`` ask ``/openapi/v3`` whether each kind's PATCH operation takes
  the ``fieldValidation`` parameter; if so they leave validation to the server (which the
  emulator's admission does), else they validate client-side from ``/openapi/v2``;
* ``kubectl apply`` builds a strategic-merge patch only for kinds whose PATCH operation
  accepts ``application/strategic-merge-patch+json``, with the patch strategies of the v3
  schema; custom resources get a JSON merge patch;
* ``kubectl explain`` renders ``/openapi/v3/apis/<group>/<version>``, finding the kind by
  ``x-kubernetes-group-version-kind``.

Custom resources are described by their CRD's own ``openAPIV3Schema`` (read from the CRD
object, never repeated here), as apiextensions' OpenAPI builder does: ``metadata`` refers
to ``ObjectMeta``, the kind carries its group-version-kind, a ``<Kind>List`` is added.

Built-in kinds get the real Kubernetes 1.37 definitions that the ``kubernetes-validate``
package ships (a JSON-Schema rendering of the API server's OpenAPI, with descriptions,
formats and patch strategies), converted back to OpenAPI. Without that package, a generic
object schema (any fields, its group-version-kind, standard metadata) stands in: enough
for kubectl's checks and for ``apply``, which then builds strategic-merge patches from the
types compiled into kubectl.

``/openapi/v2`` is served as JSON only: kubectl asks for protobuf, gets 406, and goes on
without it (it uses v3 wherever v3 answers).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.resources
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
OBJECT_META = f"{META}.ObjectMeta"
LIST_META = f"{META}.ListMeta"
PATCH = f"{META}.Patch"
STATUS = f"{META}.Status"

PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json")
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"

_WRITE_PARAMETERS = {
    "dryRun": "When present, indicates that modifications should not be persisted.",
    "fieldManager": "A name associated with the actor or entity that is making these changes.",
    "fieldValidation": (
        "How the server handles unknown fields in the request: Ignore (drop them), "
        "Warn (drop them with a Warning header, the default) or Strict (fail the request)."
    ),
}


@dataclass(frozen=True)
class Served:
    """One resource the emulator serves, as its discovery entry describes it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        """``api/v1`` or ``apis/<group>/<version>``: the key of the v3 discovery document."""
        return f"apis/{self.group}/{self.version}" if self.group else f"api/{self.version}"

    @property
    def gvk(self) -> dict[str, str]:
        return {"group": self.group, "kind": self.kind, "version": self.version}


# --------------------------------------------------------------------------------------
# Definitions: built-ins from kubernetes-validate, custom resources from their CRDs
# --------------------------------------------------------------------------------------


@functools.cache
def builtin_definitions() -> dict[str, dict[str, Any]]:
    """Kubernetes' own definitions in OpenAPI v3 form, or {} without kubernetes-validate."""
    try:
        root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    except ModuleNotFoundError:
        return {}
    folders = [p for p in root.iterdir() if re.fullmatch(r"v\d+\.\d+\.\d+-local", p.name)]
    if not folders:
        return {}
    newest = max(folders, key=lambda p: tuple(int(n) for n in p.name[1:-6].split(".")))
    defs = json.loads((newest / "_definitions.json").read_text(encoding="utf-8"))["$defs"]
    return {name: _from_json_schema(node, top=True) for name, node in defs.items()}


def _from_json_schema(node: Any, *, top: bool = False) -> Any:
    """One kubernetes-validate (JSON Schema) node as the API server's OpenAPI v3 writes it."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, list):
            value = next((t for t in value if t != "null"), "object")
        elif key == "$ref":
            value = value.replace("#/$defs/", "#/components/schemas/")
        elif key == "properties":
            value = {name: _from_json_schema(sub) for name, sub in value.items()}
            if top:  # apiVersion and kind are documented, not pinned to one value
                for name in ("apiVersion", "kind"):
                    if isinstance(value.get(name), dict):
                        value[name].pop("enum", None)
        elif key in ("items", "additionalProperties", "not"):
            value = _from_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            value = [_from_json_schema(sub) for sub in value]
        out[key] = value
    if "$ref" in out and len(out) > 1:  # OpenAPI 3.0 ignores siblings of $ref
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out


@functools.cache
def _builtin_index() -> dict[tuple[str, str, str], str]:
    """(group, version, kind) -> definition name, from x-kubernetes-group-version-kind."""
    index = {}
    for name, node in builtin_definitions().items():
        for gvk in node.get("x-kubernetes-group-version-kind", []):
            index.setdefault((gvk["group"], gvk["version"], gvk["kind"]), name)
    return index


def builtin_definition_name(group: str, version: str, kind: str) -> str | None:
    """The definition of a built-in kind, if the real definitions are available."""
    return _builtin_index().get((group, version, kind))


def schema_node(ref_or_node: Mapping[str, Any] | None) -> dict[str, Any]:
    """A built-in schema node with ``$ref``/``allOf`` references resolved (shallowly)."""
    node = dict(ref_or_node or {})
    while True:
        ref = node.pop("$ref", None) or next(
            (s.get("$ref") for s in node.pop("allOf", []) if "$ref" in s), None
        )
        if ref is None:
            return node
        node = {**builtin_definitions().get(ref.rsplit("/", 1)[-1], {}), **node}


def custom_definition_name(group: str, version: str, kind: str) -> str:
    """``dev.metapolicy.v1alpha1.MetaPolicy`` for ``metapolicy.dev/v1alpha1 MetaPolicy``."""
    return ".".join([*reversed(group.split(".")), version, kind])


def _custom_definitions(crd: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    list_kind = spec["names"].get("listKind") or f"{kind}List"
    defs: dict[str, dict[str, Any]] = {}
    for version in spec.get("versions", []):
        if not version.get("served", True):
            continue
        name = custom_definition_name(group, version["name"], kind)
        schema = copy.deepcopy((version.get("schema") or {}).get("openAPIV3Schema") or {})
        schema.setdefault("type", "object")
        props = schema.setdefault("properties", {})
        props["metadata"] = {
            "allOf": [{"$ref": f"#/components/schemas/{OBJECT_META}"}],
            "description": "Standard object's metadata.",
        }
        schema["x-kubernetes-group-version-kind"] = [
            {"group": group, "kind": kind, "version": version["name"]}
        ]
        defs[name] = schema
        defs[custom_definition_name(group, version["name"], list_kind)] = {
            "description": f"{list_kind} is a list of {kind}",
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string", "description": "APIVersion of this list."},
                "kind": {"type": "string", "description": "Kind of this list."},
                "items": {
                    "type": "array",
                    "description": f"List of {spec['names']['plural']}.",
                    "items": {"$ref": f"#/components/schemas/{name}"},
                },
                "metadata": {
                    "allOf": [{"$ref": f"#/components/schemas/{LIST_META}"}],
                    "description": "Standard list metadata.",
                },
            },
            "x-kubernetes-group-version-kind": [
                {"group": group, "kind": list_kind, "version": version["name"]}
            ],
        }
    return defs


def _generic_definition(served: Served) -> dict[str, Any]:
    """Any fields, its kind and standard metadata: what stands in for a built-in's schema."""
    return {
        "description": f"{served.kind}: the schema is not published by the embedded cluster.",
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {
                "allOf": [{"$ref": f"#/components/schemas/{OBJECT_META}"}],
                "description": "Standard object's metadata.",
            },
        },
        "x-kubernetes-preserve-unknown-fields": True,
        "x-kubernetes-group-version-kind": [served.gvk],
    }


_GENERIC_META = {
    OBJECT_META: {
        "description": "Standard object metadata.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            name: {"type": "string", "description": f"{name} of the object."}
            for name in ("name", "namespace", "generateName", "uid", "resourceVersion")
        },
    },
    LIST_META: {"description": "Standard list metadata.", "type": "object"},
    PATCH: {"description": "The body of a PATCH request.", "type": "object"},
}


# --------------------------------------------------------------------------------------
# The documents
# --------------------------------------------------------------------------------------


class Documents:
    """The OpenAPI documents of one set of served resources and CRDs (build once, serve many)."""

    def __init__(self, served: Iterable[Served], crds: Iterable[Mapping[str, Any]]) -> None:
        self.served = sorted(served, key=lambda s: (s.group, s.version, s.plural))
        self.custom: dict[tuple[str, str], dict[str, Any]] = {}  # (group, plural) -> crd
        self.definitions: dict[str, dict[str, Any]] = dict(builtin_definitions() or _GENERIC_META)
        for crd in crds:
            spec = crd["spec"]
            self.custom[spec["group"], spec["names"]["plural"]] = dict(crd)
            self.definitions.update(_custom_definitions(crd))
        self._v3: dict[str, bytes] = {}

    def definition_name(self, served: Served) -> str:
        """The components/definitions key of a served kind (generic ones are added here)."""
        if (served.group, served.plural) in self.custom:
            return custom_definition_name(served.group, served.version, served.kind)
        name = builtin_definition_name(served.group, served.version, served.kind)
        if name is None:
            name = f"embedded.generic.{served.group or 'core'}.{served.version}.{served.kind}"
            self.definitions.setdefault(name, _generic_definition(served))
        return name

    def _list_definition_name(self, served: Served) -> str | None:
        base = self.definition_name(served)
        name = f"{base}List"
        return name if name in self.definitions else None

    def group_versions(self) -> list[str]:
        return sorted({s.group_version for s in self.served})

    def v3(self, group_version: str) -> bytes | None:
        """``/openapi/v3/<group_version>`` as JSON bytes, or None if nothing is served there."""
        if group_version not in self._v3:
            served = [s for s in self.served if s.group_version == group_version]
            if not served:
                return None
            self._v3[group_version] = _dumps(self._v3_document(served))
        return self._v3[group_version]

    def v3_discovery(self) -> dict[str, Any]:
        """``/openapi/v3``: every group-version and the (hashed) URL of its document."""
        paths = {}
        for gv in self.group_versions():
            body = self.v3(gv) or b""
            digest = hashlib.sha256(body).hexdigest()[:32].upper()
            paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
        return {"paths": paths}

    def _v3_document(self, served: Sequence[Served]) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        roots: list[str] = [PATCH, STATUS]
        for s in served:
            kind_ref = self.definition_name(s)
            list_ref = self._list_definition_name(s) or kind_ref
            roots += [kind_ref, list_ref]
            custom = (s.group, s.plural) in self.custom
            patch_types = (*PATCH_TYPES, APPLY) if custom else (*PATCH_TYPES, STRATEGIC, APPLY)
            for path, ops in _resource_paths(s).items():
                paths[path] = {
                    "parameters": _path_parameters(path),
                    **{
                        method: _v3_operation(s, action, method, kind_ref, list_ref, patch_types)
                        for method, action in ops.items()
                    },
                }
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes (embedded cluster)", "version": "v1.37.0"},
            "paths": paths,
            "components": {"schemas": self._closure(roots, "#/components/schemas/")},
        }

    def v2(self) -> bytes:
        """``/openapi/v2`` (Swagger 2.0) as JSON bytes: the same definitions and paths."""
        paths: dict[str, Any] = {}
        roots: list[str] = [PATCH, STATUS]
        for s in self.served:
            kind_ref = self.definition_name(s)
            list_ref = self._list_definition_name(s) or kind_ref
            roots += [kind_ref, list_ref]
            custom = (s.group, s.plural) in self.custom
            consumes = (*PATCH_TYPES, APPLY) if custom else (*PATCH_TYPES, STRATEGIC, APPLY)
            for path, ops in _resource_paths(s).items():
                paths[path] = {
                    method: _v2_operation(s, action, method, kind_ref, list_ref, consumes)
                    for method, action in ops.items()
                }
                paths[path]["parameters"] = [
                    {"name": p["name"], "in": "path", "required": True, "type": "string"}
                    for p in _path_parameters(path)
                ]
        definitions = {
            name: _to_v2(node)
            for name, node in self._closure(roots, "#/components/schemas/").items()
        }
        doc = {
            "swagger": "2.0",
            "info": {"title": "Kubernetes (embedded cluster)", "version": "v1.37.0"},
            "paths": paths,
            "definitions": definitions,
        }
        return _dumps(doc)

    def _closure(self, roots: Iterable[str], prefix: str) -> dict[str, Any]:
        """The named definitions and everything they refer to."""
        found: dict[str, Any] = {}
        pending = [r for r in roots if r in self.definitions]
        while pending:
            name = pending.pop()
            if name in found:
                continue
            found[name] = self.definitions[name]
            for ref in _refs(found[name]):
                target = ref.removeprefix(prefix)
                if target in self.definitions and target not in found:
                    pending.append(target)
        return dict(sorted(found.items()))


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _resource_paths(s: Served) -> dict[str, dict[str, str]]:
    """Path -> {method: x-kubernetes-action} of one resource, as the API server lays them out."""
    base = f"/apis/{s.group}/{s.version}" if s.group else f"/api/{s.version}"
    scoped = f"{base}/namespaces/{{namespace}}/{s.plural}" if s.namespaced else f"{base}/{s.plural}"
    paths = {
        scoped: {"get": "list", "post": "post", "delete": "deletecollection"},
        f"{scoped}/{{name}}": {"get": "get", "put": "put", "patch": "patch", "delete": "delete"},
    }
    if s.namespaced:
        paths[f"{base}/{s.plural}"] = {"get": "list"}
    if "status" in s.subresources:
        paths[f"{scoped}/{{name}}/status"] = {"get": "get", "put": "put", "patch": "patch"}
    return paths


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", path)
    ]


def _query_parameters(action: str, *, v2: bool) -> list[dict[str, Any]]:
    names = list(_WRITE_PARAMETERS) if action in ("post", "put", "patch") else []
    if action == "patch":
        names.append("force")
    if action in ("list", "deletecollection"):
        names += ["labelSelector", "fieldSelector", "limit", "continue"]
    if action == "list":
        names += ["watch", "resourceVersion", "timeoutSeconds"]
    params = []
    for name in names:
        kind = {"force": "boolean", "limit": "integer", "timeoutSeconds": "integer"}.get(
            name, "string"
        )
        param: dict[str, Any] = {"name": name, "in": "query", "uniqueItems": True}
        param["description"] = _WRITE_PARAMETERS.get(name, name)
        if v2:
            param["type"] = kind
        else:
            param["schema"] = {"type": kind, "uniqueItems": True}
            del param["uniqueItems"]
        params.append(param)
    return params


def _v3_operation(
    s: Served, action: str, method: str, kind_ref: str, list_ref: str, patch_types: Sequence[str]
) -> dict[str, Any]:
    ref = f"#/components/schemas/{list_ref if action == 'list' else kind_ref}"
    op: dict[str, Any] = {
        "description": f"{action} {s.kind}",
        "operationId": f"{action}{s.group.replace('.', '_')}{s.version}{s.kind}",
        "parameters": _query_parameters(action, v2=False),
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref}}}}
        },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": s.gvk,
    }
    if method in ("post", "put"):
        body = {"schema": {"$ref": f"#/components/schemas/{kind_ref}"}}
        op["requestBody"] = {"content": {"*/*": body}, "required": True}
    if method == "patch":
        body = {"schema": {"$ref": f"#/components/schemas/{PATCH}"}}
        op["requestBody"] = {"content": dict.fromkeys(patch_types, body), "required": True}
    return op


def _v2_operation(
    s: Served, action: str, method: str, kind_ref: str, list_ref: str, consumes: Sequence[str]
) -> dict[str, Any]:
    ref = f"#/definitions/{list_ref if action == 'list' else kind_ref}"
    op: dict[str, Any] = {
        "description": f"{action} {s.kind}",
        "operationId": f"{action}{s.group.replace('.', '_')}{s.version}{s.kind}",
        "consumes": list(consumes) if method == "patch" else ["*/*"],
        "produces": ["application/json"],
        "parameters": _query_parameters(action, v2=True),
        "responses": {"200": {"description": "OK", "schema": {"$ref": ref}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": s.gvk,
    }
    if method in ("post", "put", "patch"):
        target = PATCH if method == "patch" else kind_ref
        op["parameters"].append(
            {"name": "body", "in": "body", "required": True,
             "schema": {"$ref": f"#/definitions/{target}"}}
        )  # fmt: skip
    return op


def _to_v2(node: Any) -> Any:
    """An OpenAPI v3 schema node as Swagger 2.0 writes it (refs, oneOf of types, nullable)."""
    if isinstance(node, list):
        return [_to_v2(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_v2(v) for k, v in node.items() if not (k == "nullable" and v in (True, False))}
    if isinstance(out.get("$ref"), str):
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/definitions/")
    if "allOf" in out and len(out["allOf"]) == 1 and "$ref" in out["allOf"][0]:
        out["$ref"] = out.pop("allOf")[0]["$ref"]
    if "oneOf" in out and all(set(o) == {"type"} for o in out["oneOf"]):
        out.pop("oneOf")
        out.setdefault("type", "string")
    return out
