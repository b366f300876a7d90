"""The workload recorder: every pod a MetaPolicy places becomes part of its observed trace.

A pod event handler records each pod matched by a policy's `podSelector` and `namespaces`
(`pods.policy_matches`, the same reading as the placement server): creation, scheduling and
end times, requests and declared attributes. A daemon per policy writes the batch to the
policy's store every `workload.recording.flushSeconds` (not a write per pod), merged into the
stored trace, pruned to the rolling window and to what the store can hold
(`metapolicy.observed`). The store replaces the trace atomically, so a kill loses at most the
batch in flight and never corrupts what was stored; the trace survives restarts and goes with
the policy's other stored objects when it is deleted.

On start the daemon lists the pods that exist, so pods created before the policy (or while the
operator was down) are recorded, and closes stored running pods that no longer exist.

Registered from `handlers.py` with `recorder.register(...)`, so the handlers land in whichever
kopf registry is being filled (the tests use a fresh one per run).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import kubernetes

from metapolicy.observed import ObservedTrace, PodRecord
from metapolicy.store import CheckpointError, CheckpointStore
from metapolicy.trace_files import InvalidTrace
from metapolicy_operator.objects import dig
from metapolicy_operator.pods import (
    TERMINAL_PHASES,
    InvalidPod,
    parse_time,
    pod_attributes,
    pod_requests,
    policy_matches,
)
from metapolicy_operator.spec import InvalidSpec, WorkloadSource, parse_spec
from metapolicy_operator.stores import policy_store

GROUP, VERSION, PLURAL = "metapolicy.dev", "v1alpha1", "metapolicies"
RECORDER_KEY = "metapolicy-recorder"
RECENTLY_CLOSED = 10_000  # uids remembered after a pod's end, so a stale listing cannot reopen it

log = logging.getLogger(__name__)


# ----- reading a pod ----------------------------------------------------------------------------


def scheduled_time(pod: Mapping) -> float | None:
    """When a node took the pod: the PodScheduled condition, else its start time."""
    for condition in dig(pod, "status", "conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "True":
            when = parse_time(condition.get("lastTransitionTime"))
            if when is not None:
                return when
    return parse_time(dig(pod, "status", "startTime"))


def ended_time(pod: Mapping, deleted: bool, now: float) -> float | None:
    """When the pod stopped holding its node: its containers' last finish, or now for a pod
    that is gone or finished without saying when; None while it may still run."""
    phase = dig(pod, "status", "phase")
    if phase not in TERMINAL_PHASES and not deleted:
        return None
    finished = [
        parse_time(dig(status, "state", "terminated", "finishedAt"))
        for status in dig(pod, "status", "containerStatuses") or []
    ]
    finished = [t for t in finished if t is not None]
    return max(finished) if finished and phase in TERMINAL_PHASES else now


def pod_record(pod: Mapping, deleted: bool, now: float) -> PodRecord:
    """The pod as the trace keeps it; raises InvalidPod if its requests cannot be read."""
    requests = pod_requests(pod)
    attributes, _ = pod_attributes(pod)  # a bad duration hint is ignored, as when serving
    created = parse_time(dig(pod, "metadata", "creationTimestamp")) or now
    scheduled = scheduled_time(pod)
    if scheduled is None and dig(pod, "spec", "nodeName"):
        scheduled = now  # bound, but the binding time is not in the object
    ended = ended_time(pod, deleted, now)
    return PodRecord(
        created=created,
        cpu=requests.cpu,
        memory_mib=requests.memory_mib,
        attributes=attributes,
        scheduled=None if scheduled is None else max(scheduled, created),
        ended=None if ended is None or scheduled is None else max(ended, scheduled),
    )


# ----- one policy's recording -------------------------------------------------------------------
@dataclass
class Recording:
    """What is recorded for one MetaPolicy: the pending batch and (once loaded) the trace."""

    key: str
    namespace: str
    pod_selector: Mapping | None
    namespaces: tuple[str, ...]
    settings: WorkloadSource
    store: CheckpointStore
    pending: dict[str, PodRecord] = field(default_factory=dict)
    trace: ObservedTrace | None = None
    closed: OrderedDict = field(default_factory=OrderedDict)
    flushes: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def selects(self) -> tuple:
        return self.pod_selector, self.namespaces

    def matches(self, pod: Mapping) -> bool:
        return policy_matches(pod, self.pod_selector, self.namespaces)

    def observe(self, uid: str, record: PodRecord) -> None:
        if uid in self.closed and not record.final:
            return  # a stale view of a pod already seen ending
        if record.final:
            self.closed[uid] = True
            while len(self.closed) > RECENTLY_CLOSED:
                self.closed.popitem(last=False)
        self.pending[uid] = record

    def write(
        self, batch: dict[str, PodRecord], now: float, alive: Iterable[str] | None = None
    ) -> int:
        """Merge a batch into the stored trace and store it (blocking: run it in a thread;
        the batch is taken from `pending` on the event loop, see `_flush`)."""
        trace = self.trace if self.trace is not None else self._load()
        for uid, record in batch.items():
            trace.observe(uid, record, now)
        trace.recorded_until = max(trace.recorded_until, now)
        if alive is not None:
            trace.close_missing(alive, trace.recorded_until)
        trace.prune(now)
        self.trace = trace
        self.store.save_trace(trace.encode(self.store.trace_limit))
        self.flushes += 1
        return len(batch)

    def _load(self) -> ObservedTrace:
        limits = (self.settings.max_tasks, self.settings.max_age_seconds)
        data = self.store.load_trace()
        if data is None:
            return ObservedTrace(*limits)
        try:
            return ObservedTrace.decode(data, *limits)
        except InvalidTrace as error:
            log.warning("%s: starting a new observed trace: %s", self.key, error)
            return ObservedTrace(*limits)


class Recorder:
    """All recordings of this operator process, by policy key, and the pods that more than one
    policy selects (the server gives those neutral scores: a pod is placed by one policy or by
    none, never by a guess)."""

    def __init__(self) -> None:
        self.recordings: dict[str, Recording] = {}
        self.shared: dict[str, tuple[str, ...]] = {}  # pod uid -> the policies selecting it
        self.on_shared_change: Callable[[set[str]], None] | None = None

    def sharing(self, key: str) -> dict[str, int]:
        """The other policies that select pods `key` selects, with how many such pods."""
        others: dict[str, int] = {}
        for keys in self.shared.values():
            if key in keys:
                for other in keys:
                    if other != key:
                        others[other] = others.get(other, 0) + 1
        return others

    def _track_sharing(self, uid: str, keys: tuple[str, ...]) -> None:
        before = self.shared.get(uid, ())
        if len(keys) > 1:
            self.shared[uid] = keys
        else:
            self.shared.pop(uid, None)
        if before != self.shared.get(uid, ()) and self.on_shared_change is not None:
            self.on_shared_change(set(before) | set(keys))

    def observe(self, pod: Mapping, deleted: bool, now: float | None = None) -> int:
        """Record a pod for every policy that places it; returns how many do."""
        uid = dig(pod, "metadata", "uid")
        if not uid:
            return 0
        now = time.time() if now is None else now
        matched = [r for r in list(self.recordings.values()) if r.matches(pod)]
        self._track_sharing(uid, () if deleted else tuple(sorted(r.key for r in matched)))
        if not matched:
            return 0
        try:
            record = pod_record(pod, deleted, now)
        except (InvalidPod, ValueError) as error:
            log.warning("not recording pod %s: %s", uid, error)
            return 0
        for recording in matched:
            recording.observe(uid, record)
        return len(matched)


def _recorder(memo: kopf.Memo) -> Recorder:
    recorder = memo.get(RECORDER_KEY)
    if recorder is None:
        recorder = memo[RECORDER_KEY] = Recorder()
    return recorder


async def _list_pods(core, namespaces: Iterable[str]) -> list[dict]:
    api = core.api_client
    pods = []
    for namespace in namespaces:
        result = await asyncio.to_thread(core.list_namespaced_pod, namespace)
        pods += [api.sanitize_for_serialization(item) for item in result.items]
    return pods


async def _flush(recording: Recording, alive: Iterable[str] | None = None) -> None:
    """Take the pending batch on the event loop (pod events keep arriving into a new one),
    write it in a thread; if the write fails the batch is pending again, newer records first."""
    async with recording.lock:
        if not recording.pending and alive is None:
            return
        batch, recording.pending = recording.pending, {}
        try:
            written = await asyncio.to_thread(recording.write, batch, time.time(), alive)
        except BaseException:
            recording.pending = batch | recording.pending
            raise
        log.debug("%s: recorded %d pod updates", recording.key, written)


def register(runtime_key: str) -> None:
    """Attach the recorder's handlers to the kopf registry being filled now."""

    @kopf.on.startup(id="workload-recorder")
    async def start_recorder(memo: kopf.Memo, **_: Any) -> None:
        _recorder(memo)

    @kopf.on.event("", "v1", "pods", id="workload-recorder")
    async def pod_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _recorder(memo).observe(body, deleted=type == "DELETED")

    @kopf.daemon(GROUP, VERSION, PLURAL, id="workload-recorder", cancellation_timeout=10.0)
    async def record_workload(
        body: kopf.Body,
        namespace: str,
        name: str,
        memo: kopf.Memo,
        stopped: kopf.DaemonStopped,
        logger: logging.Logger,
        **_: Any,
    ) -> None:
        """One recording per MetaPolicy, flushed in batches while the policy exists. The spec
        is read again before every flush, so selector and window changes apply."""
        runtime = memo.get(runtime_key)
        core = runtime.core if runtime is not None else kubernetes.client.CoreV1Api()
        recorder = _recorder(memo)
        key = f"{namespace}/{name}"
        recording: Recording | None = None
        try:
            while not stopped:
                try:
                    spec = parse_spec(body.get("spec"))
                except InvalidSpec as error:
                    logger.warning("not recording pods: %s", error)
                    spec = None
                if spec is not None and spec.pod_selector is not None:
                    selects = (spec.pod_selector, spec.namespaces or (namespace,))
                    if (
                        recording is None
                        or (recording.pod_selector, recording.namespaces) != selects
                    ):
                        recording = Recording(
                            key=key,
                            namespace=namespace,
                            pod_selector=selects[0],
                            namespaces=selects[1],
                            settings=spec.workload_source,
                            store=policy_store(core, body, spec),
                            trace=None if recording is None else recording.trace,
                        )
                        recorder.recordings[key] = recording
                        alive = await _record_existing(recorder, recording, core, logger)
                        await _flush_logged(recording, alive, logger)
                    recording.settings = spec.workload_source
                    if recording.trace is not None:
                        recording.trace.max_tasks = spec.workload_source.max_tasks
                        recording.trace.max_age_s = spec.workload_source.max_age_seconds
                elif recording is not None:  # no podSelector any more: the policy places nothing
                    recorder.recordings.pop(key, None)
                    recording = None
                wait = spec.workload_source.flush_seconds if spec is not None else 30.0
                await stopped.wait(wait)
                if recording is not None and not (stopped and _deleted(stopped)):
                    await _flush_logged(recording, None, logger)
        finally:
            if recording is not None and recorder.recordings.get(key) is recording:
                del recorder.recordings[key]


async def _record_existing(recorder: Recorder, recording: Recording, core, logger) -> list | None:
    """Record the pods that exist now; their uids, to close stored pods that are gone."""
    try:
        pods = await _list_pods(core, recording.namespaces)
    except kubernetes.client.ApiException as error:
        logger.warning("cannot list pods to record: %s", error)
        return None
    mine = [pod for pod in pods if recording.matches(pod)]
    for pod in mine:
        recorder.observe(pod, deleted=False)
    return [pod["metadata"]["uid"] for pod in mine]


def _deleted(stopped: kopf.DaemonStopped) -> bool:
    reason = stopped.reason
    return reason is not None and bool(reason & kopf.DaemonStoppingReason.RESOURCE_DELETED)


async def _flush_logged(recording: Recording, alive, logger: logging.Logger) -> None:
    try:
        await _flush(recording, alive)
    except (CheckpointError, OSError) as error:
        logger.warning("observed trace not written (retried next flush): %s", error)
