"""The observed workload: a rolling record of the pods a policy placed, kept in its store.

The operator's recorder fills an `ObservedTrace` from pod events (creation, scheduling and end
times, requests, declared attributes); the library replays it (`to_trace` then
`traces.TraceTasks`). Kept bounded (the newest `max_tasks`, none older than `max_age_s`) and
stored gzip-compressed as column-wise JSON, so 50k pods take a few hundred KB.

A pod is keyed by its uid while it may still change (pending or running). Once it has ended
its record is final and its uid is dropped to save space: if the same finished pod is seen
again (the operator restarted and lists it anew) its times and requests identify it.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from metapolicy.features import OWNER_GROUPS, QOS_CLASSES, PodAttributes
from metapolicy.trace_files import InvalidTrace, Trace, from_tasks

FORMAT = "metapolicy.dev/observed-trace"
VERSION = 1
DEFAULT_MAX_TASKS = 50_000
DEFAULT_MAX_AGE_S = 7 * 86_400.0


@dataclass(frozen=True)
class PodRecord:
    created: float  # Unix seconds
    cpu: float  # cores requested
    memory_mib: float
    attributes: PodAttributes
    scheduled: float | None = None  # bound to a node; None: still pending (or never ran)
    ended: float | None = None  # finished or deleted; None: still running or pending

    @property
    def final(self) -> bool:
        return self.ended is not None

    def signature(self) -> tuple:
        """What identifies a finished pod without its uid (whole seconds, as the API has)."""
        return (
            _second(self.created),
            _second(self.scheduled),
            _second(self.ended),
            round(self.cpu * 1000),
            round(self.memory_mib),
        )


def _second(t: float | None) -> int | None:
    return None if t is None else math.floor(t)


class ObservedTrace:
    """Pod records, newest last, bounded by count and age."""

    def __init__(
        self,
        max_tasks: int = DEFAULT_MAX_TASKS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
    ) -> None:
        if max_tasks < 1 or not max_age_s > 0:
            raise ValueError("max_tasks and max_age_s must be positive")
        self.max_tasks = max_tasks
        self.max_age_s = max_age_s
        self.open: dict[str, PodRecord] = {}  # uid -> record that may still change
        self.closed: list[PodRecord] = []  # final records
        self._signatures: set[tuple] = set()
        self.recorded_until = 0.0  # the latest time the recorder vouches for

    def __len__(self) -> int:
        return len(self.open) + len(self.closed)

    def observe(self, uid: str, record: PodRecord, now: float) -> bool:
        """Insert or update a pod; returns whether anything changed."""
        self.recorded_until = max(self.recorded_until, now)
        if record.final:
            previous = self.open.pop(uid, None)
            if previous is not None and previous.scheduled is not None:
                record = replace(record, scheduled=record.scheduled or previous.scheduled)
            if record.signature() in self._signatures:
                return previous is not None
            self._close(record)
            return True
        if self.open.get(uid) == record:
            return False
        self.open[uid] = record
        return True

    def _close(self, record: PodRecord) -> None:
        self.closed.append(record)
        self._signatures.add(record.signature())

    def close_missing(self, alive: Iterable[str], when: float) -> int:
        """Close open records whose pod no longer exists (it ended while nobody watched, e.g.
        while the operator was down): it ran at least until `when`, the last time the recorder
        saw it, which is what its record then says."""
        alive = set(alive)
        gone = [uid for uid in self.open if uid not in alive]
        for uid in gone:
            record = self.open.pop(uid)
            if record.scheduled is not None:
                self._close(replace(record, ended=max(when, record.scheduled)))
        return len(gone)

    def prune(self, now: float) -> int:
        """Drop records older than the window, then the oldest beyond `max_tasks`."""
        before = len(self)
        cutoff = now - self.max_age_s
        self.closed = [r for r in self.closed if r.created >= cutoff]
        self.open = {uid: r for uid, r in self.open.items() if r.created >= cutoff}
        excess = len(self) - self.max_tasks
        if excess > 0:
            self._drop_oldest(excess)
        self._signatures = {r.signature() for r in self.closed}
        return before - len(self)

    def _drop_oldest(self, count: int) -> None:
        items = [(r.created, 0, i, None) for i, r in enumerate(self.closed)]
        items += [(r.created, 1, 0, uid) for uid, r in self.open.items()]
        items.sort(key=lambda item: item[:3])
        dropped_closed = {i for _, kind, i, _ in items[:count] if kind == 0}
        for _, kind, _, uid in items[:count]:
            if kind == 1:
                del self.open[uid]
        self.closed = [r for i, r in enumerate(self.closed) if i not in dropped_closed]

    # ----- replay ---------------------------------------------------------------------------------
    def to_trace(self) -> Trace:
        """Pods that ran, as a trace; still-running pods are censored at `recorded_until`.
        Pods still pending, or deleted before a node took them, never ran and are left out."""
        ran = [(r, False) for r in self.closed if r.scheduled is not None]
        ran += [(r, True) for r in self.open.values() if r.scheduled is not None]
        if not ran:
            raise InvalidTrace("the observed trace has no pod that ran yet")
        end = self.recorded_until
        duration = [max((end if running else r.ended) - r.scheduled, 0.0) for r, running in ran]
        return from_tasks(
            arrival=[r.created for r, _ in ran],
            cpu=[r.cpu for r, _ in ran],
            memory=[r.memory_mib for r, _ in ran],
            duration=duration,
            attributes=[r.attributes for r, _ in ran],
            censored=[running for _, running in ran],
            info={
                "format": "observed",
                "recorded": len(self),
                "never_scheduled": len(self) - len(ran),
            },
        )

    def ran(self) -> int:
        """Pods that ran (the tasks a replay has)."""
        return sum(r.scheduled is not None for r in self.closed) + sum(
            r.scheduled is not None for r in self.open.values()
        )

    # ----- storage --------------------------------------------------------------------------------
    def encode(self, max_bytes: int | None = None) -> bytes:
        """gzip-compressed JSON; if over `max_bytes`, the oldest records are dropped until it
        fits (the trace is pruned in place, so what is kept is what was stored)."""
        data = _compress(self._columns())
        if max_bytes is None or len(data) <= max_bytes:
            return data
        low, high = 0, len(self)  # drop `high` always fits (an empty trace)
        while high - low > 1:
            middle = (low + high) // 2
            trial = self.copy()
            trial._drop_oldest(middle)
            if len(_compress(trial._columns())) <= max_bytes:
                high = middle
            else:
                low = middle
        self._drop_oldest(high)
        self._signatures = {r.signature() for r in self.closed}
        return _compress(self._columns())

    def copy(self) -> ObservedTrace:
        other = ObservedTrace(self.max_tasks, self.max_age_s)
        other.open = dict(self.open)
        other.closed = list(self.closed)
        other._signatures = set(self._signatures)
        other.recorded_until = self.recorded_until
        return other

    def _columns(self) -> dict:
        records = [("", r) for r in self.closed] + list(self.open.items())
        records.sort(key=lambda item: item[1].created)
        base = math.floor(records[0][1].created) if records else 0
        created, previous = [], base
        for _, r in records:
            created.append(round(r.created - previous, 3))
            previous = r.created
        return {
            "format": FORMAT,
            "version": VERSION,
            "recorded_until": self.recorded_until,
            "base": base,
            "created": created,  # gaps between creations, the first from `base`
            "wait": [_delta(r.scheduled, r.created) for _, r in records],
            "run": [_delta(r.ended, r.scheduled) for _, r in records],
            "ended_pending": [int(r.scheduled is None and r.ended is not None) for _, r in records],
            "cpu_m": [round(r.cpu * 1000) for _, r in records],
            "memory_mib": [round(r.memory_mib, 3) for _, r in records],
            "qos": [QOS_CLASSES.index(r.attributes.qos) for _, r in records],
            "gpu": [r.attributes.gpu for _, r in records],
            "priority": [r.attributes.priority for _, r in records],
            "owner": [OWNER_GROUPS.index(r.attributes.owner) for _, r in records],
            "hint": [r.attributes.duration_hint_s for _, r in records],
            "uid": [uid for uid, _ in records],
        }

    @classmethod
    def decode(
        cls,
        data: bytes,
        max_tasks: int = DEFAULT_MAX_TASKS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
    ) -> ObservedTrace:
        """Inverse of `encode`; raises InvalidTrace on anything else."""
        try:
            doc = json.loads(gzip.decompress(data))
        except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidTrace(f"stored observed trace is unreadable: {error}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InvalidTrace("stored data is not an observed trace")
        if doc.get("version") != VERSION:
            raise InvalidTrace(f"observed trace version {doc.get('version')!r} is not {VERSION}")
        trace = cls(max_tasks, max_age_s)
        try:
            trace.recorded_until = float(doc["recorded_until"])
            created = float(doc["base"])
            for i, gap in enumerate(doc["created"]):
                created += gap
                wait, run = doc["wait"][i], doc["run"][i]
                scheduled = None if wait is None else created + wait
                if doc["ended_pending"][i]:
                    ended = created
                else:
                    ended = None if run is None or scheduled is None else scheduled + run
                record = PodRecord(
                    created=created,
                    cpu=doc["cpu_m"][i] / 1000,
                    memory_mib=float(doc["memory_mib"][i]),
                    attributes=PodAttributes(
                        qos=QOS_CLASSES[doc["qos"][i]],
                        gpu=float(doc["gpu"][i]),
                        priority=int(doc["priority"][i]),
                        owner=OWNER_GROUPS[doc["owner"][i]],
                        duration_hint_s=doc["hint"][i],
                    ),
                    scheduled=scheduled,
                    ended=ended,
                )
                if record.final:
                    trace._close(record)
                else:
                    trace.open[doc["uid"][i]] = record
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise InvalidTrace(f"stored observed trace is malformed: {error!r}") from None
        return trace


def _delta(later: float | None, earlier: float | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round(later - earlier, 3)


def _compress(columns: dict) -> bytes:
    text = json.dumps(columns, separators=(",", ":"))
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)
