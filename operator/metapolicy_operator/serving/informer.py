"""List + watch, as client-go's informers do, in a daemon thread per watched collection.

The thread lists, then watches from the list's resourceVersion, and re-watches from the last
version seen whenever the server ends the stream (every `watch_seconds`). A `410 Gone` (the
version is too old) or any error means events may have been missed: it lists again, after a
backoff on errors. Objects are decoded and turned into compact records (`prepare`) in the
thread; the records are handed to the event loop (`call_soon_threadsafe`), where the cache
applies them in order, so the cache is only ever touched by the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0  # seconds for a list, and to connect a watch
BACKOFF = (0.5, 10.0)  # first and longest wait before listing again after an error


class _Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class Informer:
    """One watched collection. `call` is the client's list method for it with its fixed
    arguments bound (namespace, label selector); it is called with `_preload_content=False`
    so that JSON is decoded once, by `json`, not by the client's model classes."""

    def __init__(
        self,
        name: str,
        call: Callable[..., Any],
        loop: asyncio.AbstractEventLoop,
        prepare: Callable[[dict], Any],
        on_list: Callable[[list], None],
        on_event: Callable[[str, Any], None],
        watch_seconds: int = 60,
    ) -> None:
        self.name = name
        self.call = call
        self.loop = loop
        self.prepare = prepare
        self.on_list = on_list
        self.on_event = on_event
        self.watch_seconds = watch_seconds
        self.synced = False  # set on the loop once the first list is applied
        self.last_contact = time.monotonic()  # a list, a watch (re)connection or an event
        self.lists = 0
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        response = self._response
        if response is not None:  # unblock a read waiting for the next event
            with contextlib.suppress(Exception):  # best effort: the thread is a daemon anyway
                getattr(response, "shutdown", response.close)()
        self._thread.join(timeout)

    # ----- the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        backoff = BACKOFF[0]
        while not self._stop.is_set():
            try:
                version = self._list()
                backoff = BACKOFF[0]
                while not self._stop.is_set():
                    version = self._watch(version)
            except _Gone:
                log.info("%s: watch expired (410 Gone); listing again", self.name)
            except _LoopClosed:
                return
            except Exception as error:  # any failure: list again, later
                if self._stop.is_set():
                    return
                log.warning(
                    "%s: list/watch failed (%s: %s); listing again in %.1fs",
                    self.name, type(error).__name__, error, backoff,
                )  # fmt: skip
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF[1])

    def _list(self) -> str:
        response = self.call(_preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        data = json.loads(response.data)
        items = [self.prepare(item) for item in data.get("items") or []]
        self._deliver(self._apply_list, items)
        self.lists += 1
        self.last_contact = time.monotonic()
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _apply_list(self, items: list) -> None:
        self.on_list(items)
        self.synced = True

    def _watch(self, version: str) -> str:
        try:
            response = self.call(
                watch=True,
                resource_version=version or None,
                timeout_seconds=self.watch_seconds,
                allow_watch_bookmarks=True,
                _preload_content=False,
                _request_timeout=(REQUEST_TIMEOUT, self.watch_seconds + REQUEST_TIMEOUT),
            )
        except ApiException as error:
            if error.status == 410:
                raise _Gone from None
            raise
        self._response = response
        self.last_contact = time.monotonic()
        try:
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    break
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise RuntimeError(f"watch error: {obj.get('message') or obj}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                self.last_contact = time.monotonic()
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._deliver(self.on_event, kind, self.prepare(obj))
        finally:
            self._response = None
            response.release_conn()
        return version

    def _deliver(self, fn: Callable, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the server is gone
            self._stop.set()
            raise _LoopClosed from None


class _LoopClosed(Exception):
    pass
