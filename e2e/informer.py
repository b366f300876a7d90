"""A list-watch cache of raw API objects, as client-go's informers keep them for kube-scheduler.

Objects stay the JSON the API server sent (plain dicts, camelCase), never client models: the
scheduler driver forwards pods to the extender exactly as the API returned them. A thread lists,
then watches from the list's resourceVersion; on any watch error (410 Gone included) it lists
again, so the cache converges after the emulator or a real API server drops a stream. Handlers
are called in the watch thread, after the cache has changed, with the event type and object.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import kubernetes

from e2e.cluster import Kube

Handler = Callable[[str, dict[str, Any]], None]

#: Each watch request ends after this many seconds (the server closes it) and is renewed, so a
#: stop is noticed within that time even when nothing changes.
WATCH_SECONDS = 5
RELIST_BACKOFF = 0.5


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


class Informer:
    """Nodes or pods (`kind`), optionally narrowed by a label selector, kept in `objects`."""

    def __init__(self, kube: Kube, kind: str, *, label_selector: str | None = None) -> None:
        if kind not in ("pods", "nodes"):
            raise ValueError(f"unsupported kind {kind!r}")
        self.kube = kube
        self.kind = kind
        self.label_selector = label_selector
        self.objects: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()
        self.synced = threading.Event()
        self.handlers: list[Handler] = []
        self.errors: list[str] = []  # handler failures (a test asserts there are none)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{kind}", daemon=True)
        self._watch: kubernetes.watch.Watch | None = None

    def add_handler(self, handler: Handler) -> None:
        self.handlers.append(handler)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self, timeout: float = WATCH_SECONDS + 5) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(timeout)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.objects.values())

    def get(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            return self.objects.get(key)

    # ----- the list-watch loop ---------------------------------------------------------------
    def _list_call(self) -> Callable[..., Any]:
        core = self.kube.core
        return core.list_pod_for_all_namespaces if self.kind == "pods" else core.list_node

    def _selector(self) -> dict[str, str]:
        return {"label_selector": self.label_selector} if self.label_selector else {}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._relist()
                while not self._stop.is_set():
                    version = self._watch_once(version)
            except (kubernetes.client.ApiException, OSError, ValueError, KeyError):
                # A dropped stream, a 410 Gone, a server restarting: list again.
                self._stop.wait(RELIST_BACKOFF)
            except Exception:  # urllib3 errors and the like: same recovery
                self._stop.wait(RELIST_BACKOFF)

    def _relist(self) -> str:
        response = self._list_call()(_preload_content=False, **self._selector())
        listed = json.loads(response.data)
        fresh = {object_key(o): o for o in listed.get("items") or []}
        with self.lock:
            old = self.objects
            self.objects = fresh
        for key, obj in old.items():
            if key not in fresh:
                self._notify("DELETED", obj)
        for key, obj in fresh.items():
            self._notify("MODIFIED" if key in old else "ADDED", obj)
        self.synced.set()
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    def _watch_once(self, version: str) -> str:
        self._watch = kubernetes.watch.Watch()
        kwargs: dict[str, Any] = {"timeout_seconds": WATCH_SECONDS, "deserialize": False}
        if version:
            kwargs["resource_version"] = version
        for event in self._watch.stream(self._list_call(), **self._selector(), **kwargs):
            if self._stop.is_set():
                break
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":
                raise ValueError(f"watch error: {obj}")
            if kind == "BOOKMARK":
                version = obj["metadata"]["resourceVersion"]
                continue
            key = object_key(obj)
            with self.lock:
                if kind == "DELETED":
                    self.objects.pop(key, None)
                else:
                    self.objects[key] = obj
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            self._notify(kind, obj)
        return version

    def _notify(self, kind: str, obj: dict[str, Any]) -> None:
        for handler in self.handlers:
            try:
                handler(kind, obj)
            except Exception as error:  # kept for tests; the cache goes on
                self.errors.append(f"{getattr(handler, '__qualname__', handler)}: {error!r}")
