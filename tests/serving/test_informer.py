"""List + watch: events in order, a relist after 410 Gone or an error, readiness after the first
list. A scripted API stands in for the kubernetes client."""

import asyncio
import json
import threading

from kubernetes.client.exceptions import ApiException

from metapolicy_operator.serving.informer import Informer
from tests.serving.conftest import wait_for


class Response:
    def __init__(self, body: bytes = b"", lines: list[dict] | None = None) -> None:
        self.data = body
        self._lines = lines or []

    def stream(self, amt=None, decode_content=False):
        for line in self._lines:
            yield json.dumps(line).encode() + b"\n"

    def release_conn(self) -> None:
        pass


class ScriptedApi:
    """Lists answer the current items; watches play the next script entry, then block."""

    def __init__(self, watches: list) -> None:
        self.items = [{"metadata": {"name": "a", "resourceVersion": "1"}}]
        self.watches = list(watches)
        self.calls: list[dict] = []
        self.idle = threading.Event()

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if not kwargs.get("watch"):
            body = {"metadata": {"resourceVersion": "10"}, "items": self.items}
            return Response(json.dumps(body).encode())
        if not self.watches:
            self.idle.wait(5)  # a quiet watch; the test stops the informer meanwhile
            return Response()
        step = self.watches.pop(0)
        if isinstance(step, Exception):
            raise step
        return Response(lines=step)


def event(kind: str, name: str, version: str) -> dict:
    return {"type": kind, "object": {"metadata": {"name": name, "resourceVersion": version}}}


async def run(api: ScriptedApi):
    lists, events = [], []
    informer = Informer(
        "things",
        api,
        asyncio.get_running_loop(),
        prepare=lambda obj: obj["metadata"]["name"],
        on_list=lambda items: lists.append(items),
        on_event=lambda kind, name: events.append((kind, name)),
    )
    informer.start()
    return informer, lists, events


async def test_events_follow_the_list_and_resume_from_the_last_version():
    api = ScriptedApi([[event("ADDED", "b", "11"), event("BOOKMARK", "", "15")]])
    informer, lists, events = await run(api)
    try:
        await wait_for(lambda: informer.synced and events, what="list and first event")
        assert lists == [["a"]] and events == [("ADDED", "b")]
        await wait_for(lambda: len(api.calls) >= 3, what="the second watch")
        assert api.calls[1]["resource_version"] == "10"
        assert api.calls[2]["resource_version"] == "15"  # after the bookmark
        assert api.calls[1]["allow_watch_bookmarks"] and api.calls[1]["timeout_seconds"]
    finally:
        api.idle.set()
        await asyncio.to_thread(informer.stop)


async def test_a_410_gone_lists_again():
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    api = ScriptedApi([[gone]])
    informer, lists, _ = await run(api)
    try:
        await wait_for(lambda: len(lists) == 2, what="a second list")
    finally:
        api.idle.set()
        await asyncio.to_thread(informer.stop)


async def test_an_expired_version_or_an_error_lists_again():
    api = ScriptedApi([ApiException(status=410, reason="Gone"), ConnectionError("reset")])
    informer, lists, _ = await run(api)
    try:
        await wait_for(lambda: len(lists) == 3, what="a list after each failure")
    finally:
        api.idle.set()
        await asyncio.to_thread(informer.stop)
