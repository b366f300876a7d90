"""The observed trace: recording, bounds, censoring, encoding, and its place in the store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from metapolicy.features import PodAttributes
from metapolicy.observed import ObservedTrace, PodRecord
from metapolicy.store import TRACE_FILE, FilesystemStore
from metapolicy.trace_files import InvalidTrace

GUARANTEED = PodAttributes(qos="Guaranteed", owner="service", priority=100)
BATCH = PodAttributes(qos="BestEffort", owner="batch", gpu=0.5, duration_hint_s=60.0)


def pod(created: float, scheduled=None, ended=None, cpu=1.0, attributes=GUARANTEED) -> PodRecord:
    return PodRecord(
        created=created,
        cpu=cpu,
        memory_mib=512.0,
        attributes=attributes,
        scheduled=scheduled,
        ended=ended,
    )


def test_a_pod_is_updated_through_its_life_and_counted_once():
    trace = ObservedTrace()
    assert trace.observe("a", pod(100), now=100)
    assert not trace.observe("a", pod(100), now=101)  # nothing new
    assert trace.observe("a", pod(100, scheduled=102), now=102)
    assert trace.observe("a", pod(100, ended=160), now=160)  # the end event lacks the binding
    assert len(trace) == 1 and not trace.open
    (record,) = trace.closed
    assert (record.scheduled, record.ended) == (102, 160)
    # the same finished pod listed again after a restart (its uid no longer stored)
    assert not trace.observe("a", pod(100, scheduled=102, ended=160), now=170)
    assert len(trace) == 1


def test_running_pods_are_censored_at_the_recording_time_and_pending_ones_left_out():
    trace = ObservedTrace()
    trace.observe("done", pod(0, scheduled=1, ended=31), now=31)
    trace.observe("running", pod(10, scheduled=12), now=40)
    trace.observe("pending", pod(20), now=100)
    replay = trace.to_trace()
    np.testing.assert_array_equal(replay.arrival, [0, 10])
    np.testing.assert_array_equal(replay.duration, [30, 88])  # 100 - 12: a lower bound
    np.testing.assert_array_equal(replay.censored, [False, True])
    assert replay.info["never_scheduled"] == 1
    assert trace.ran() == 2


def test_no_pod_ran_yet():
    trace = ObservedTrace()
    trace.observe("p", pod(0), now=1)
    with pytest.raises(InvalidTrace, match="no pod that ran"):
        trace.to_trace()


def test_rolling_window_by_count_and_by_age():
    trace = ObservedTrace(max_tasks=3, max_age_s=100)
    for i in range(5):
        trace.observe(f"p{i}", pod(10 * i, scheduled=10 * i, ended=10 * i + 5), now=10 * i + 5)
    trace.observe("old-running", pod(1, scheduled=2), now=50)
    assert trace.prune(now=50) == 3
    assert sorted(r.created for r in trace.closed) == [20, 30, 40]
    assert not trace.open
    assert trace.prune(now=125) == 1  # 30 and 40 are within 100 s of 125, 20 is not
    assert sorted(r.created for r in trace.closed) == [30, 40]


def test_pods_that_vanished_while_nobody_watched_are_closed():
    trace = ObservedTrace()
    trace.observe("gone", pod(0, scheduled=1), now=50)
    trace.observe("alive", pod(5, scheduled=6), now=50)
    trace.observe("never-bound", pod(7), now=50)
    assert trace.close_missing({"alive"}, when=50) == 2
    assert list(trace.open) == ["alive"]
    (closed,) = trace.closed  # the unbound one never ran: dropped
    assert (closed.scheduled, closed.ended) == (1, 50)


def test_encode_decode_round_trip():
    trace = ObservedTrace()
    trace.observe("a", pod(1000.5, scheduled=1001, ended=1100, attributes=BATCH), now=1100)
    trace.observe("b", pod(1002, scheduled=1003.25, cpu=0.25), now=1200)
    trace.observe("c", pod(1003), now=1200)
    again = ObservedTrace.decode(trace.encode())
    assert again.recorded_until == 1200
    assert again.closed == trace.closed
    assert again.open == trace.open
    np.testing.assert_array_equal(again.to_trace().duration, trace.to_trace().duration)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"not gzip", "unreadable"), (b"\x1f\x8b\x08\x00garbage", "unreadable")],
)
def test_decode_refuses_garbage(data, message):
    with pytest.raises(InvalidTrace, match=message):
        ObservedTrace.decode(data)


def test_encode_drops_the_oldest_records_to_fit_a_size_limit():
    trace = ObservedTrace()
    rng = np.random.default_rng(0)
    for i in range(3000):
        created = i * 7.0 + rng.random()
        trace.observe(f"p{i}", pod(created, created + 1, created + 1 + rng.exponential(300)), now=i)
    full = trace.encode()
    limited = trace.encode(max_bytes=len(full) // 3)
    assert len(limited) <= len(full) // 3
    kept = ObservedTrace.decode(limited)
    assert 0 < len(kept) < 3000
    assert min(r.created for r in kept.closed) > 1000  # the newest survive
    assert len(trace) == len(kept)  # pruned in place: memory matches what is stored


def test_fifty_thousand_tasks_take_well_under_a_mebibyte():
    trace = ObservedTrace()
    rng = np.random.default_rng(1)
    created = 1.7e9
    for i in range(50_000):
        created += float(rng.integers(0, 20))
        run = float(rng.integers(1, 3600))
        attributes = GUARANTEED if i % 3 else BATCH
        record = pod(created, created + 1, created + 1 + run, float(rng.choice([0.1, 0.5, 2])))
        trace.observe(
            f"uid-{i}", PodRecord(**{**record.__dict__, "attributes": attributes}), now=created
        )
    size = len(trace.encode())
    assert size < 600 * 1024, size


def test_filesystem_store_keeps_the_trace_next_to_the_checkpoints(tmp_path: Path):
    store = FilesystemStore(tmp_path / "store")
    assert store.load_trace() is None
    store.save_trace(b"first")
    store.save_trace(b"second")
    assert store.load_trace() == b"second"
    assert [p.name for p in (tmp_path / "store").iterdir() if p.name.startswith(".tmp")] == []
    store.delete_all()
    assert store.load_trace() is None


def test_a_crash_mid_write_keeps_the_previous_trace(tmp_path: Path, monkeypatch):
    store = FilesystemStore(tmp_path)
    store.save_trace(b"kept")

    def crash(*_args, **_kwargs):
        raise OSError("killed mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        store.save_trace(b"lost")
    monkeypatch.undo()
    assert (tmp_path / TRACE_FILE).read_bytes() == b"kept"
    assert store.load_trace() == b"kept"
