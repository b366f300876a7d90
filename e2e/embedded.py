"""
An embedded Kubernetes API for tests, the demo and e2e runs: no real cluster needed.

It wraps the KMock Kubernetes emulator (https://github.com/nolar/kmock), a stateful
Kubernetes API over HTTP (discovery, CRUD, merge/JSON patches, watch streams), and
adds what an operator needs on top of it:

* discovery of the built-in resources kopf and the operator use, with the metadata
  taken from KMock's bundled K3s discovery dump, and of the custom resources read
  from the CRD files themselves (nothing is duplicated by hand);
* the CRD objects and the usual namespaces, so they can be listed and watched;
* the API-server bookkeeping that plain KMock lacks and kopf relies on:
  ``generateName`` (kopf posts Events with it), ``resourceVersion`` (kopf guards its
  finalizer JSON-patches with a ``test`` op on it), ``uid``, ``creationTimestamp``,
  ``generation``, the ``status`` subresource split, ``timeoutSeconds`` and
  ``resourceVersion`` on watches, and watch streams that end when the server stops;
* what kubectl needs to treat it as an API server: OpenAPI documents, server-side
  tables, admission of custom resources with their CRD's own schema, every PATCH type,
  ``PUT``, ``Status`` errors worded as the API server's (see docs/dev/kmock.md);
* a kubeconfig file, so kopf, kubectl and the ``kubernetes`` client can connect.

The emulator runs in its own thread and event loop. That keeps it serving while the
caller blocks (a synchronous ``kubernetes`` client call, ``KopfRunner`` joining its
thread) and keeps kopf's end-of-run task sweep away from the server's tasks.

KMock is a test/demo dependency: only this module imports it; the helper modules beside
it (openapi, tables, admission, field_errors, crd_schema, patches) know nothing of KMock.

Run it as a process with ``python -m e2e.embedded --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections.abc
import contextlib
import copy
import datetime
import functools
import logging
import os
import pathlib
import random
import re
import signal
import string
import sys
import tempfile
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from e2e import admission, openapi, patches, tables
from e2e.field_errors import StatusError

#: Built-in resources served by default: what kopf needs (namespaces, events, CRDs),
#: what the operator watches or writes (nodes, pods, configmaps), and leases.
DEFAULT_BUILTINS: tuple[str, ...] = (
    "v1/namespaces",
    "v1/nodes",
    "v1/pods",
    "v1/events",
    "v1/configmaps",
    "coordination.k8s.io/v1/leases",
    "apiextensions.k8s.io/v1/customresourcedefinitions",
    "batch/v1/jobs",  # training Jobs (spec.training.backend: job), run by e2e/joblet.py
)

#: Namespaces that exist in every real cluster; kopf serves only existing namespaces.
DEFAULT_NAMESPACES: tuple[str, ...] = ("default", "kube-system")

_log = logging.getLogger(__name__)

CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES = kmock.resource("", "v1", "namespaces")
_CRD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


def _fix_namespace_paths() -> None:
    """
    Make the namespaces themselves addressable: ``/api/v1/namespaces[/NAME[/status]]``.

    KMock 0.8 reads every ``/api/v1/namespaces/X`` as a namespace prefix, so listing
    namespaces fails with a 500 and a namespace cannot be fetched. kopf lists and watches
    namespaces whenever it serves namespace patterns instead of the whole cluster.
    The wrap is skipped on a KMock that parses these paths right.
    """
    from kmock._internal import parsing  # the parser KMock's request parsing looks up

    original = parsing.parse_path
    with contextlib.suppress(ValueError):
        if original("/api/v1/namespaces").plural == "namespaces":
            return

    def parse_path(path: str) -> parsing.ParsedPath:
        parts = path.strip("/").split("/")
        is_namespaces = parts[:1] == ["api"] and len(parts) >= 3 and parts[2] == "namespaces"
        if is_namespaces and (len(parts) <= 4 or parts[4] in {"status", "finalize"}):
            name = parts[3] if len(parts) > 3 else None
            subresource = "/".join(parts[4:]) or None
            return parsing.ParsedPath("", parts[1], "namespaces", None, name, subresource)
        return original(path)

    parsing.parse_path = parse_path


_fix_namespace_paths()


def load_crds(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Read every CustomResourceDefinition document from the given YAML files."""
    crds: list[dict[str, Any]] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    crds.append(doc)
    return crds


def crd_resources(crd: Mapping[str, Any]) -> dict[kmock.resource, kmock.ResourceInfo]:
    """Discovery entries of a CRD: one per served version, all taken from the CRD itself."""
    spec = crd["spec"]
    names = spec["names"]
    result: dict[kmock.resource, kmock.ResourceInfo] = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or spec.get("subresources") or {}
        resource = kmock.resource(spec["group"], version["name"], names["plural"])
        result[resource] = kmock.ResourceInfo(
            kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(),
            namespaced=spec["scope"] == "Namespaced",
            shortnames=names.get("shortNames", []),
            categories=names.get("categories", []),
            subresources=subresources.keys(),
            verbs=_CRD_VERBS,
        )
    return result


def write_kubeconfig(
    path: str | os.PathLike[str], url: str, *, name: str = "embedded", namespace: str = "default"
) -> pathlib.Path:
    """
    Write a kubeconfig for the emulator (atomically, so a polling reader never sees half a file).

    There are no credentials: the emulator does not authenticate, and both kopf's
    ``login_via_client`` and ``login_with_kubeconfig`` accept a user without any.
    An existing file is replaced only if it is one of ours, never a real kubeconfig.
    """
    path = pathlib.Path(path)
    if path.exists():
        existing = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if [c.get("name") for c in existing.get("clusters", [])] != [name]:
            raise FileExistsError(
                f"{path} is not an embedded-cluster kubeconfig; not replacing it."
            )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}
        ],
        "current-context": name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """
    KMock's emulator plus the API-server behaviour that kopf and kubectl depend on.

    Every write is turned into the object it should store before KMock stores it (the
    request is rewritten into a replacement of the whole object), so KMock stays the
    single owner of the objects, their history and the watch buses, while this class
    decides what a write means: patch types, the status subresource, admission of custom
    resources, metadata bookkeeping. Writes are serialised, so each is computed from the
    version it replaces.

    KMock keeps every request and every version of every object, and matches each new
    request against its whole request log: a long demo run slows down quadratically
    (~0.15 s per request after 300 requests). Only the last ``request_log`` requests
    and ``history`` versions per object are kept, which is plenty for assertions.
    """

    request_log: int = 10
    history: int = 16
    _revision: int = attrs.field(default=0, init=False)
    _closing: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _openapi: tuple[Any, openapi.Documents] | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Above KMock's own fallback for watches, below anything a test declares: the same
        # stream, labelled as JSON; client-go (kubectl wait, get -w) rejects octet-streams.
        json_lines = kmock.headers({"Content-Type": "application/json"})
        (self.fallback**1)[kmock.action.WATCH] << json_lines << self._serve_watch

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve the CRD's resources in discovery, as the API server does once it is created."""
        for resource, info in crd_resources(crd).items():
            self.resources[resource] = info

    def seed(self, resource: kmock.resource, body: Mapping[str, Any]) -> dict[str, Any]:
        """Store an object before the server starts, stamped like an API-created one.

        No admission: a test can store what the API would refuse (e.g. an invalid spec
        written under an older schema), to see how its readers cope.
        """
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        self._stamp(resource, obj, meta.get("namespace"))
        self.objects[resource, meta.get("namespace"), meta["name"]] = obj
        return obj

    async def _handle(self, request: kmock.Request) -> Any:
        warnings: list[str] = []
        try:
            if (served := await self._serve_for_kubectl(request)) is not None:
                return served
            if request.method == kmock.method.PUT and request.name is not None:
                request = self._rewritten(request, action=kmock.action.UPDATE)
            if _is_binding(request):
                return await self._serve_binding(request)
            if request.resource is None or request.action not in _WRITES:
                return await super()._handle(request)
            async with self._writes:  # computed from the version it replaces
                if request.action == kmock.action.CREATE:
                    request, warnings = self._prepare_create(request)
                elif request.action == kmock.action.UPDATE:
                    request, warnings = self._prepare_update(request)
                else:
                    self._prepare_delete(request)
                response = await super()._handle(request)
        except patches.PatchError as e:
            reason = {400: "BadRequest", 415: "UnsupportedMediaType"}.get(e.status, "Invalid")
            raise kmock.KubernetesError(status=e.status, reason=reason, message=str(e)) from e
        except StatusError as e:
            raise kmock.KubernetesError(
                status=e.status, reason=e.reason, message=e.message, details=e.details
            ) from e
        finally:
            self._forget(request)
        if warnings:  # clients rarely show Warning headers: say it here too
            _log.warning("%s %s: %s", request.method, request.url.path, "; ".join(warnings))
        for text in warnings if not response.prepared else []:  # RFC 7234 warn-code 299
            response.headers.add("Warning", '299 - "{}"'.format(text.replace('"', '\\"')))
        return response

    def _rewritten(self, request: kmock.Request, **changes: Any) -> kmock.Request:
        """The request with its meaning changed, in KMock's log in its place.

        KMock matches a request to its reactions by identity in its request log.
        """
        new = attrs.evolve(request, **changes)
        for i in range(len(self._requests) - 1, -1, -1):
            if self._requests[i] is request:
                self._requests[i] = new
                break
        return new

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        """A ``Status`` as the API server sends it (KMock adds a traceback as details)."""
        if not isinstance(exc, kmock.KubernetesError):
            _log.error("Request failed", exc_info=exc)
            exc = kmock.KubernetesError(status=500, reason="InternalError", message=repr(exc))
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": exc.message or "",
            "reason": exc.reason or "",
            "code": exc.status,
        }
        if exc.details:
            status["details"] = exc.details
        return aiohttp.web.json_response(status, status=exc.status)

    def _forget(self, request: kmock.Request) -> None:
        """Trim the request logs and the object's history (see the class docstring)."""
        del self._requests[: -self.request_log]
        for reaction in self._payloads:
            del reaction._requests[: -self.request_log]
        name = request.name
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            name = request.data.get("metadata", {}).get("name")
        key = (request.resource, request.namespace, name)
        if request.resource is not None and name is not None and key in self.objects:
            del self.objects[key].history[: -self.history]

    def _stamp(self, resource: kmock.resource, obj: dict[str, Any], namespace: str | None) -> None:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        if not meta.get("name"):
            raise kmock.KubernetesError(
                status=422, reason="Invalid", message="metadata.name or generateName is required"
            )
        info = self._info(resource)
        if namespace and (info is None or info.namespaced is not False):
            meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["creationTimestamp"] = meta.get("creationTimestamp") or _now()
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = self._next_revision()
        group_version = f"{resource.group}/{resource.version}" if resource.group else "v1"
        obj.setdefault("apiVersion", group_version)
        if info is not None and info.kind:
            obj.setdefault("kind", info.kind)
        if resource == CRDS:
            obj.setdefault("status", _crd_status(obj))

    def _prepare_create(self, request: kmock.Request) -> tuple[kmock.Request, list[str]]:
        """The object to store for a create: stamped, and admitted if it is a custom one."""
        resource = request.resource
        if not isinstance(request.data, dict) or resource is None:
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message="the body must be a JSON object"
            )
        obj = copy.deepcopy(request.data)
        given = (obj.get("metadata") or {}).get("namespace")
        if request.namespace and given and given != request.namespace:
            raise kmock.KubernetesError(
                status=400,
                reason="BadRequest",
                message="the namespace of the provided object does not match the namespace "
                "sent on the request",
            )
        warnings: list[str] = []
        crd = self._crd_for(resource)
        if crd is not None:
            if self._has_status(resource):
                obj.pop("status", None)  # set through the status subresource only
            self._stamp(resource, obj, request.namespace)
            directive = request.params.get("fieldValidation")
            admitted = admission.admit(crd, obj, operation="create", directive=directive)
            obj, warnings = admitted.object, admitted.warnings
        else:
            self._stamp(resource, obj, request.namespace)
        if resource == CRDS:
            self.register_crd(obj)
        return self._rewritten(request, data=obj), warnings

    def _prepare_update(self, request: kmock.Request) -> tuple[kmock.Request, list[str]]:
        """
        The object to store for a PATCH or PUT, as a whole-object replacement for KMock.

        A patch (of any type, see ``e2e/patches.py``) or a replacement is applied to the
        stored version; the status subresource changes only status, the main resource
        everything else; metadata the server owns is kept; a resourceVersion in the
        request must match the stored one (409). Custom resources are then admitted.
        """
        resource = request.resource
        assert resource is not None
        key = (resource, request.namespace, request.name)
        kind = patches.patch_type(request.headers.get("Content-Type"))
        replace = request.method == kmock.method.PUT
        if key not in self.objects or self.objects[key].deleted:
            if kind == patches.APPLY_PATCH and not replace:  # server-side apply creates
                return self._apply_create(request)
            raise _not_found(resource, request.name)
        crd = self._crd_for(resource)
        if kind == patches.STRATEGIC_MERGE_PATCH and crd is not None:
            raise kmock.KubernetesError(
                status=415,
                reason="UnsupportedMediaType",
                message="the body of the request was in an unknown format - accepted media "
                f"types include: {', '.join(_CUSTOM_PATCH_TYPES)}",
            )
        current = copy.deepcopy(self.objects[key].raw)
        body = patches.parse_body(kind, request.text, request.data)
        if replace:
            if not isinstance(body, dict):
                raise patches.PatchError("the body must be a JSON object", 400)
            candidate = copy.deepcopy(body)
        else:
            schema, resolve = self._patch_schema(resource, current)
            candidate = patches.apply(current, body, kind, schema=schema, resolve=resolve)
        expected = (candidate.get("metadata") or {}).get("resourceVersion")
        if expected and expected != current.get("metadata", {}).get("resourceVersion"):
            raise kmock.KubernetesError(
                status=409,
                reason="Conflict",
                message=f"Operation cannot be fulfilled on {_qualified(resource)} "
                f'"{request.name}": the object has been modified; please apply your changes '
                "to the latest version and try again",
            )
        new = self._scoped(resource, current, candidate, request.subresource == "status")
        warnings: list[str] = []
        if crd is not None:
            admitted = admission.admit(
                crd,
                new,
                old=current,
                scope="status" if request.subresource == "status" else "main",
                operation="update" if replace else "patch",
                directive=request.params.get("fieldValidation"),
            )
            new, warnings = admitted.object, admitted.warnings
        meta = new["metadata"]
        if _content(new) != _content(current):
            meta["generation"] = current["metadata"].get("generation", 0) + 1
        meta["resourceVersion"] = self._next_revision()
        if resource == CRDS:
            self.register_crd(new)
        replacement = [{"op": "replace", "path": "", "value": new}]
        return self._rewritten(request, action=kmock.action.UPDATE, data=replacement), warnings

    async def _serve_binding(self, request: kmock.Request) -> aiohttp.web.Response:
        """``POST .../pods/NAME/binding``: what a scheduler does to place a pod.

        As the API server's BindingREST: the pod gets ``spec.nodeName`` and the condition
        ``PodScheduled=True``; 409 if it is already bound or being deleted, 404 if it does
        not exist; the answer is a ``Status`` with code 201. One MODIFIED event follows.
        """
        async with self._writes:
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                raise _not_found(request.resource, request.name)
            body = request.data if isinstance(request.data, dict) else {}
            node = (body.get("target") or {}).get("name")
            if not node or body.get("kind", "Binding") != "Binding":
                raise kmock.KubernetesError(
                    status=400,
                    reason="BadRequest",
                    message="a Binding with target.name is required",
                )
            pod = copy.deepcopy(self.objects[key].raw)
            meta, spec = pod.setdefault("metadata", {}), pod.setdefault("spec", {})
            problem = None
            if meta.get("deletionTimestamp"):
                problem = f"pod {request.name} is being deleted, cannot be assigned to a host"
            elif spec.get("nodeName"):
                problem = f'pod {request.name} is already assigned to node "{spec["nodeName"]}"'
            if problem:
                raise kmock.KubernetesError(status=409, reason="Conflict", message=problem)
            spec["nodeName"] = node
            status = pod.setdefault("status", {})
            conditions = [
                c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"
            ]
            scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}
            status["conditions"] = [*conditions, scheduled]
            meta["resourceVersion"] = self._next_revision()
            replacement = [{"op": "replace", "path": "", "value": pod}]
            update = self._rewritten(
                request, action=kmock.action.UPDATE, subresource=None, data=replacement
            )
            await super()._handle(update)
        success = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }
        return aiohttp.web.json_response(success, status=201)

    def _apply_create(self, request: kmock.Request) -> tuple[kmock.Request, list[str]]:
        """Server-side apply of an object that does not exist yet: a create."""
        body = patches.parse_body(patches.APPLY_PATCH, request.text, request.data)
        if not isinstance(body, dict):
            raise patches.PatchError("the body must be a JSON or YAML object", 400)
        body = copy.deepcopy(body)
        body.setdefault("metadata", {})["name"] = request.name
        create = self._rewritten(request, action=kmock.action.CREATE, data=body)
        return self._prepare_create(create)

    def _scoped(
        self,
        resource: kmock.resource,
        current: dict[str, Any],
        candidate: dict[str, Any],
        status_only: bool,
    ) -> dict[str, Any]:
        """What a write may change: the status subresource only status, the rest the rest."""
        if status_only:
            new = copy.deepcopy(current)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
            return new
        new = candidate
        if self._has_status(resource):
            if "status" in current:
                new["status"] = current["status"]
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise patches.PatchError("metadata must be an object")
        for field in _SERVER_OWNED:
            if field in current.get("metadata", {}):
                meta[field] = current["metadata"][field]
            else:
                meta.pop(field, None)
        new["apiVersion"] = current.get("apiVersion", new.get("apiVersion"))
        new["kind"] = current.get("kind", new.get("kind"))
        return new

    def _patch_schema(
        self, resource: kmock.resource, obj: Mapping[str, Any]
    ) -> tuple[dict[str, Any] | None, patches.Resolver | None]:
        """The schema that says how a built-in kind's lists merge (strategic merge patch)."""
        name = openapi.builtin_definition_name(
            resource.group or "", resource.version or "", str(obj.get("kind", ""))
        )
        if name is None:
            return None, None
        return openapi.builtin_definitions()[name], openapi.schema_node

    def _prepare_delete(self, request: kmock.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if request.resource is None or key not in self.objects or self.objects[key].deleted:
            if request.resource is not None and request.name is not None:
                raise _not_found(request.resource, request.name)
            return  # KMock answers itself.
        obj = self.objects[key]  # in place: the DELETED event carries this version
        obj["metadata"] = {**obj.raw.get("metadata", {}), "resourceVersion": self._next_revision()}

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        # Not .get(): KMock's ResourcesArray creates (and then serves) entries on lookup.
        if resource in self.resources:
            return self.resources[resource]
        return None

    def _has_status(self, resource: kmock.resource) -> bool:
        info = self._info(resource)
        return info is not None and "status" in info.subresources

    def _crd_for(self, resource: kmock.resource) -> dict[str, Any] | None:
        """The stored CRD that defines a custom resource (None for built-ins)."""
        if not resource.group or resource == CRDS:
            return None
        key = (CRDS, None, f"{resource.plural}.{resource.group}")
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def _crds(self) -> list[dict[str, Any]]:
        return [
            obj.raw
            for (resource, _, _), obj in list(self.objects.items())
            if resource == CRDS and not obj.deleted
        ]

    def _read(self, resource: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        """An object as served: custom resources defaulted by the current schema."""
        crd = self._crd_for(resource)
        return admission.default(crd, copy.deepcopy(obj)) if crd is not None else obj

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    # --- what kubectl asks for beyond CRUD: OpenAPI and tables ------------------------------

    async def _serve_for_kubectl(self, request: kmock.Request) -> aiohttp.web.Response | None:
        """OpenAPI documents and Table responses; None for every other request."""
        path = request.url.path.rstrip("/")
        if path.startswith("/openapi/") and request.method == kmock.method.GET:
            return self._serve_openapi(request, path)
        version = tables.table_version(request.headers.get("Accept"))
        if version is None or request.resource is None:
            return None
        if request.action == kmock.action.LIST:
            listed = await self._serve_list(request)
            objects, revision = listed["items"], listed["metadata"]["resourceVersion"]
        elif request.action == kmock.action.FETCH:
            fetched = await self._serve_fetch(request)
            objects, revision = [fetched], fetched.get("metadata", {}).get("resourceVersion")
        else:
            return None  # watches: see _serve_watch
        body = tables.table(
            objects,
            self._columns(request.resource),
            resource_version=revision,
            include_object=request.params.get("includeObject"),
            version=version,
        )
        return aiohttp.web.json_response(body)

    def _serve_openapi(self, request: kmock.Request, path: str) -> aiohttp.web.Response:
        documents = self._documents()
        if path == "/openapi/v3":
            return aiohttp.web.json_response(documents.v3_discovery())
        if path.startswith("/openapi/v3/"):
            body = documents.v3(path.removeprefix("/openapi/v3/"))
            if body is None:
                raise kmock.KubernetesError(status=404, reason="NotFound", message="not found")
            return aiohttp.web.Response(body=body, content_type="application/json")
        if path == "/openapi/v2":
            accept = request.headers.get("Accept") or "*/*"
            if not any(t in accept for t in ("application/json", "*/*")):
                raise kmock.KubernetesError(
                    status=406,
                    reason="NotAcceptable",
                    message=f"only application/json is served here, not {accept}",
                )
            return aiohttp.web.Response(body=documents.v2(), content_type="application/json")
        raise kmock.KubernetesError(status=404, reason="NotFound", message="not found")

    def _documents(self) -> openapi.Documents:
        """The OpenAPI documents of what is served now (rebuilt when that changes)."""
        crds = self._crds()
        served = []
        for resource in list(self.resources):
            info = self.resources[resource]
            if info.kind and resource.plural and resource.version is not None:
                served.append(
                    openapi.Served(
                        resource.group or "",
                        resource.version,
                        resource.plural,
                        info.kind,
                        info.namespaced is not False,
                        tuple(sorted(info.subresources)),
                    )
                )
        key = (
            tuple(sorted(served, key=repr)),
            tuple(sorted((c["metadata"]["name"], _version(c)) for c in crds)),
        )
        if self._openapi is None or self._openapi[0] != key:
            self._openapi = (key, openapi.Documents(served, crds))
        return self._openapi[1]

    def _columns(self, resource: kmock.resource) -> list[tables.Column]:
        crd = self._crd_for(resource)
        if crd is None:
            return tables.builtin_columns(resource.group or "", resource.plural or "")
        served = next(
            (v for v in crd["spec"]["versions"] if v["name"] == resource.version),
            {},
        )
        return tables.custom_columns(served.get("additionalPrinterColumns"))

    async def _serve_version(self, request: kmock.Request) -> Any:
        """KMock's discovery document, corrected where kubectl and client libraries trip."""
        payload = await super()._serve_version(request)
        payload["groupVersion"] = payload["groupVersion"].lstrip("/")  # "v1", not "/v1"
        for entry in payload["resources"]:
            if "/" in entry["name"]:  # subresources: no names of their own, else "ambiguous"
                entry.update(singularName="", shortNames=[], categories=[])
                if entry["name"].endswith("/status"):
                    entry["verbs"] = ["get", "patch", "update"]
        return payload

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        assert request.resource is not None  # fetches are always of a resource
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise _not_found(request.resource, request.name)
        return self._read(request.resource, await super()._serve_fetch(request))

    async def _serve_list(self, request: kmock.Request) -> Any:
        payload = await super()._serve_list(request)
        assert request.resource is not None  # lists are always of a resource
        info = self._info(request.resource)
        group, version = request.resource.group, request.resource.version
        payload["apiVersion"] = f"{group}/{version}" if group else version
        payload["kind"] = f"{info.kind}List" if info is not None and info.kind else "List"
        payload["metadata"]["resourceVersion"] = str(self._revision)
        payload["items"] = [
            self._read(request.resource, obj) for obj in payload["items"] if _selected(request, obj)
        ]
        return payload

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        """
        A watch stream that misses nothing, repeats nothing, and ends when it should.

        KMock lists the objects first and subscribes to changes after sending them,
        so changes made meanwhile are never delivered. Here the subscription comes
        first, and resourceVersions drop what the listing already shows. Also:
        ``resourceVersion=N`` resumes after N (kopf does so after its initial list);
        ``timeoutSeconds`` ends the stream (the ``kubernetes`` client's watches return
        only then); and streams end cleanly when the server stops (else it waits ~2 min).
        ``sendInitialEvents=true`` (client-go's watch-list, as in ``kubectl wait``) ends the
        initial events with the bookmark that says so, or the client never considers
        itself in sync.
        Objects are served as reads serve them (custom resources defaulted), and as
        one-row tables when the client asks for tables (``kubectl get -w``).
        """
        yield b""  # send the headers now: clients wait for them before anything else
        assert request.resource is not None  # watches are always of a resource
        resource = request.resource
        version = tables.table_version(request.headers.get("Accept"))
        columns = self._columns(resource) if version else []
        headers = [True]

        def served(event: dict[str, Any]) -> dict[str, Any]:
            obj = self._read(resource, event["object"])
            if version is not None:
                obj = tables.table(
                    [obj],
                    columns,
                    resource_version=obj.get("metadata", {}).get("resourceVersion"),
                    include_object=request.params.get("includeObject"),
                    version=version,
                    headers=headers.pop() if headers else False,
                )
            return {"type": event["type"], "object": obj}

        loop = asyncio.get_running_loop()
        timeout = _as_float(request.params.get("timeoutSeconds"))
        deadline = None if timeout is None else loop.time() + timeout
        since = _as_int(request.params.get("resourceVersion")) or 0
        bus = self._buses[request.resource]
        marker = await bus.mark()
        try:
            # Changes are applied in the order of their versions (the lock is FIFO), so all
            # versions up to this one are in the listing below, and later ones on the bus.
            horizon = max(since, int(self._revision))
            async with self._lock:
                listed = {
                    (namespace, name): obj.raw
                    for (resource, namespace, name), obj in self.objects.items()
                    if not obj.deleted and _watched(request, resource, namespace, name)
                    if _selected(request, obj.raw)
                }
            for obj in listed.values():
                if not since or _version(obj) > since:
                    yield served({"type": "ADDED", "object": obj})
            if request.params.get("sendInitialEvents") == "true":  # a "watch-list" (client-go)
                yield self._initial_events_end(resource, horizon)
            async for event in self._until_done(bus.stream(since=marker), deadline):
                meta = event["object"].get("metadata", {})
                key = (meta.get("namespace"), meta.get("name"))
                if not _watched(request, request.resource, *key):
                    continue
                if not _selected(request, event["object"]):
                    continue  # NB: no DELETED when an object stops matching, unlike real servers
                # KMock's release of a finalized object re-sends its last version as DELETED.
                released = event["type"] == "DELETED" and key in listed
                if _version(event["object"]) > horizon or released:
                    yield served(event)
        finally:
            await bus.unmark(marker)

    def _initial_events_end(self, resource: kmock.resource, revision: int) -> dict[str, Any]:
        """The bookmark after the initial events of a watch-list: the client is in sync."""
        info = self._info(resource)
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": info.kind if info is not None and info.kind else "",
                "apiVersion": f"{resource.group}/{resource.version}"
                if resource.group
                else resource.version,
                "metadata": {
                    "resourceVersion": str(revision),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            },
        }

    async def _until_done(
        self, events: AsyncIterator[Any], deadline: float | None
    ) -> AsyncIterator[Any]:
        """Pass the events through until the deadline or the server's stop, whichever first."""
        loop = asyncio.get_running_loop()
        closing = asyncio.ensure_future(self._closing.wait())
        step: asyncio.Future[Any] | None = None
        try:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                step = asyncio.ensure_future(anext(events))
                await asyncio.wait(
                    {step, closing}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if not step.done():
                    break  # timed out or closing
                try:
                    event = step.result()
                except StopAsyncIteration:
                    break
                step = None
                yield event
        finally:
            # Also on the client's disconnect (aiohttp cancels the handler): the pending
            # step must be finished before the generator under it can be closed.
            pending = [task for task in (step, closing) if task is not None]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if isinstance(events, collections.abc.AsyncGenerator):
                await events.aclose()


@attrs.frozen
class EmbeddedCluster:
    """A running emulator: where it serves, how to reach it, and its in-memory state."""

    url: str
    kubeconfig: pathlib.Path
    emulator: Emulator
    crds: tuple[dict[str, Any], ...]


@contextlib.asynccontextmanager
async def embedded_cluster(
    crd_paths: Iterable[str | os.PathLike[str]] = (),
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    kubeconfig: str | os.PathLike[str] | None = None,
    builtins: Sequence[str] = DEFAULT_BUILTINS,
    namespaces: Sequence[str] = DEFAULT_NAMESPACES,
    timeout: float = 10.0,
) -> AsyncIterator[EmbeddedCluster]:
    """
    Serve an emulated Kubernetes API for the duration of the ``async with`` block.

    ``port=0`` picks a free port. Without ``kubeconfig``, the file goes to a temporary
    directory removed on exit. ``timeout`` bounds both the start and the stop.
    """
    crds = load_crds(crd_paths)
    emulator = Emulator()
    _register_builtins(emulator, builtins)
    for crd in crds:
        emulator.register_crd(crd)
        emulator.seed(CRDS, crd)
    for namespace in namespaces:
        emulator.seed(NAMESPACES, {"metadata": {"name": namespace}, "status": {"phase": "Active"}})

    with contextlib.ExitStack() as stack:
        if kubeconfig is None:
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="embedded-k8s-"))
            kubeconfig = pathlib.Path(tmpdir) / "kubeconfig"
        server = _ServerThread(emulator, host=host, port=port)
        server.start()
        try:
            if not await asyncio.to_thread(server.ready.wait, timeout):
                raise TimeoutError(f"The emulator did not start within {timeout}s.")
            if server.error is not None:
                raise RuntimeError("The emulator failed to start.") from server.error
            assert server.url is not None
            path = write_kubeconfig(kubeconfig, server.url)
            yield EmbeddedCluster(
                url=server.url, kubeconfig=path, emulator=emulator, crds=tuple(crds)
            )
        finally:
            server.stop()
            await asyncio.to_thread(server.join, timeout)
            if server.is_alive():
                raise RuntimeError(f"The emulator did not stop within {timeout}s.")
        if server.error is not None:  # reached only when the block itself exited cleanly
            raise RuntimeError("The emulator crashed while serving.") from server.error


class _ServerThread(threading.Thread):
    """Runs the emulator's HTTP server in a private event loop until told to stop."""

    def __init__(self, emulator: Emulator, *, host: str, port: int) -> None:
        super().__init__(name="embedded-k8s", daemon=True)
        self.emulator = emulator
        self.host = host
        self.port = port
        self.ready = threading.Event()
        self.url: str | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:
            self.error = e
        finally:
            self.ready.set()  # never leave the starter waiting

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        server = kmock.Server(self.emulator, host=self.host, port=self.port or None)
        async with self.emulator, server:
            self.url = str(server.url).rstrip("/")
            self.ready.set()
            await self._stop_requested.wait()
            self.emulator._closing.set()  # end the watch streams before the server waits for them

    def stop(self) -> None:
        if self._loop is not None and self._stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._stop_requested.set)


@functools.cache
def _bundled_resources() -> kmock.ResourcesArray:
    """KMock's bundled discovery dump of a real (K3s) cluster, parsed once per process."""
    bundled = kmock.ResourcesArray()
    with warnings.catch_warnings():  # KMock 0.8 still uses importlib.resources.read_binary()
        warnings.simplefilter("ignore", DeprecationWarning)
        bundled.load_bundled()
    return bundled


def _register_builtins(emulator: Emulator, builtins: Iterable[str]) -> None:
    """Copy the built-ins' discovery info from KMock's dump of a real cluster, not by hand."""
    bundled = _bundled_resources()
    for name in builtins:
        resource = kmock.resource(name)
        if resource not in bundled:
            raise ValueError(f"{name!r} is not in the bundled discovery data of KMock.")
        emulator.resources[resource] = bundled[resource]


def _crd_status(crd: Mapping[str, Any]) -> dict[str, Any]:
    spec = crd.get("spec", {})
    conditions = [("NamesAccepted", "NoConflicts"), ("Established", "InitialNamesAccepted")]
    return {
        "acceptedNames": spec.get("names", {}),
        "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
        "conditions": [
            {"type": kind, "status": "True", "reason": reason, "lastTransitionTime": _now()}
            for kind, reason in conditions
        ],
    }


#: Actions that write, and the metadata a write cannot change (the server owns it).
_WRITES = (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE)
_SERVER_OWNED = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)


_CUSTOM_PATCH_TYPES = [p for p in patches.PATCH_TYPES if p != patches.STRATEGIC_MERGE_PATCH]


def _content(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a generation counts: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _qualified(resource: kmock.resource) -> str:
    """``metapolicies.metapolicy.dev`` or ``nodes``: how the server names a resource."""
    return f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)


def _not_found(resource: kmock.resource, name: str | None) -> kmock.KubernetesError:
    """404 as the API server words it: ``metapolicies.metapolicy.dev "x" not found``."""
    details = {"name": name, "group": resource.group, "kind": resource.plural}
    return kmock.KubernetesError(
        status=404,
        reason="NotFound",
        message=f'{_qualified(resource)} "{name}" not found',
        details={k: v for k, v in details.items() if v},
    )


def _is_binding(request: kmock.Request) -> bool:
    """A pod's binding subresource, posted (KMock guesses no action for it)."""
    return (
        request.method == kmock.method.POST
        and request.resource is not None
        and (request.resource.group, request.resource.plural) == ("", "pods")
        and request.name is not None
        and request.subresource == "binding"
    )


def _watched(
    request: kmock.Request, resource: kmock.resource, namespace: str | None, name: str | None
) -> bool:
    """Whether a watch request covers the object (cluster-wide watches cover all namespaces)."""
    return (
        resource == request.resource
        and (request.namespace is None or namespace == request.namespace)
        and (request.name is None or name == request.name)
    )


def _selected(request: kmock.Request, obj: Mapping[str, Any]) -> bool:
    """Whether the object passes the request's ``labelSelector`` and ``fieldSelector``."""
    labels = obj.get("metadata", {}).get("labels") or {}
    return _matches(request.params.get("labelSelector", ""), labels.get) and _matches(
        request.params.get("fieldSelector", ""), lambda path: _field(obj, path)
    )


def _matches(selector: str, lookup: Callable[[str], Any]) -> bool:
    """
    Match a Kubernetes selector: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``,
    ``k``, ``!k``, comma-separated and ANDed. A missing key fails ``=`` and passes ``!=``.
    """
    for term in filter(None, (t.strip() for t in re.split(r",(?![^(]*\))", selector))):
        if match := re.fullmatch(r"([^!=\s]+)\s*(==|=|!=)\s*(.*)", term):
            key, op, value = match.groups()
            if (lookup(key) == value.strip()) == (op == "!="):
                return False
        elif match := re.fullmatch(r"(\S+)\s+(in|notin)\s*\((.*)\)", term):
            key, op, values = match.groups()
            found = lookup(key) in {v.strip() for v in values.split(",")}
            if found != (op == "in"):
                return False
        elif (lookup(term.lstrip("!").strip()) is None) != term.startswith("!"):
            return False
    return True


def _field(obj: Mapping[str, Any], path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool):
        return str(value).lower()  # as Kubernetes spells them: "true", "false"
    return None if value is None else str(value)


def _version(obj: Mapping[str, Any]) -> int:
    """The object's resourceVersion; 0 for objects stored without one (e.g. set in tests)."""
    return _as_int(obj.get("metadata", {}).get("resourceVersion")) or 0


def _as_int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _as_float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: Sequence[str] | None = None) -> int:
    """
    Serve the emulator until SIGTERM/SIGINT: for the demo and e2e runs.

    Prints ``READY <url>`` on stdout once the kubeconfig is written and the server
    accepts connections; everything else goes to stderr.
    """
    parser = argparse.ArgumentParser(
        prog="python -m e2e.embedded",
        description="Serve an emulated Kubernetes API (KMock) with the given CRDs.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    parser.add_argument("--crd", action="append", default=[], help="CRD YAML file (repeatable)")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with embedded_cluster(
            args.crd, host=args.host, port=args.port, kubeconfig=args.kubeconfig
        ) as cluster:
            print(f"READY {cluster.url}", flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
