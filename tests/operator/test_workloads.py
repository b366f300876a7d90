"""spec.workload.source: parsing, and resolving it against the policy's store."""

from __future__ import annotations

import copy
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from metapolicy.features import PodAttributes
from metapolicy.observed import ObservedTrace, PodRecord
from metapolicy.store import FilesystemStore
from metapolicy.traces import TraceTasks
from metapolicy.workload import WorkloadSpec
from metapolicy_operator.spec import InvalidSpec, parse_spec
from metapolicy_operator.workloads import (
    WorkloadUnavailable,
    resolve_workload,
    with_workload,
)

FIXTURES = Path(__file__).parents[1] / "model" / "fixtures"


def spec(**workload):
    return parse_spec({"workload": {"episodeTasks": 32} | workload})


def record(observed: ObservedTrace, count: int, running: int = 0, pending: int = 0) -> None:
    rng = np.random.default_rng(0)
    for i in range(count + running + pending):
        created = 5.0 * i
        if i < count:
            end = created + 1 + float(rng.exponential(60))
            pod = PodRecord(created, 1.0, 512.0, PodAttributes(), created + 1, end)
        elif i < count + running:
            pod = PodRecord(created, 2.0, 512.0, PodAttributes(qos="Guaranteed"), created + 1)
        else:
            pod = PodRecord(created, 1.0, 512.0, PodAttributes())
        observed.observe(f"uid-{i}", pod, now=created + 100)


def test_spec_defaults_and_choices():
    parsed = parse_spec({}).workload_source
    assert (parsed.source, parsed.min_observed_tasks, parsed.max_tasks) == (
        "synthetic",
        1000,
        50_000,
    )
    assert (parsed.max_age_seconds, parsed.flush_seconds) == (604_800, 30)
    parsed = spec(source="trace", trace={"path": "/t.csv", "format": "generic"}).workload_source
    assert (parsed.trace_path, parsed.trace_format) == ("/t.csv", "generic")


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ({"source": "spreadsheet"}, "spec.workload.source='spreadsheet'"),
        ({"source": "trace"}, "spec.workload.trace.path is required"),
        ({"source": "trace", "trace": {"path": "/t", "format": "parquet"}}, "trace.format"),
        ({"minObservedTasks": 2}, "spec.workload.minObservedTasks"),
        ({"recording": {"flushSeconds": 0}}, "spec.workload.recording.flushSeconds"),
    ],
)
def test_bad_workload_specs_name_the_field(workload, message):
    with pytest.raises(InvalidSpec, match=message):
        spec(**workload)


def test_synthetic_is_the_spec_model(tmp_path):
    resolved = resolve_workload(spec(load=0.7), FilesystemStore(tmp_path))
    assert isinstance(resolved.workload, WorkloadSpec) and resolved.workload.load == 0.7
    assert (resolved.source, resolved.tasks, resolved.condition()) == ("synthetic", None, None)


def test_trace_source_reads_and_fits_the_file(tmp_path):
    path = tmp_path / "pods.csv"
    rows = ["arrival_s,cpu_cores,memory_mib,duration_s,qos"]
    rows += [
        f"{10 * i},{1 + i % 4},{1024 * (1 + i % 3)},{30 + i % 50},Guaranteed" for i in range(200)
    ]
    path.write_text("\n".join(rows) + "\n")
    parsed = spec(source="trace", trace={"path": str(path)}, load=0.5)
    resolved = resolve_workload(parsed, FilesystemStore(tmp_path / "store"))
    assert isinstance(resolved.workload, TraceTasks)
    assert (resolved.source, resolved.tasks) == ("trace", 200)
    assert resolved.workload.load == 0.5 and resolved.workload.episode_tasks == 32
    assert resolved.record_fields() == {"workloadSource": "trace", "workloadTasks": 200}
    settings = with_workload(parsed, resolved)
    assert settings.training.workload is resolved.workload
    assert settings.adaptation.workload is resolved.workload
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        clone = pool.submit(copy.copy, settings.training).result()  # as the operator's workers
    assert len(clone.workload.trace) == 200


@pytest.mark.parametrize(
    ("name", "message"), [("missing.csv", "cannot read trace"), ("bad.csv", "unknown trace format")]
)
def test_an_unusable_trace_is_an_error_not_a_silent_fallback(tmp_path, name, message):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    parsed = spec(source="trace", trace={"path": str(tmp_path / name)})
    with pytest.raises(WorkloadUnavailable, match=message):
        resolve_workload(parsed, FilesystemStore(tmp_path / "store"))


def test_observed_falls_back_to_synthetic_until_enough_pods_ran(tmp_path):
    store = FilesystemStore(tmp_path)
    parsed = spec(source="observed", minObservedTasks=100)
    resolved = resolve_workload(parsed, store)
    assert resolved.source == "synthetic" and resolved.requested == "observed"
    assert resolved.condition() == (
        False,
        "NothingRecorded",
        "no pod recorded yet; training uses the synthetic model until 100 have run",
    )
    observed = ObservedTrace()
    record(observed, 60, running=10, pending=5)
    store.save_trace(observed.encode())
    resolved = resolve_workload(parsed, store)
    assert resolved.source == "synthetic" and resolved.recorded == 75
    status, reason, message = resolved.condition()
    assert (status, reason) == (False, "TooFewObserved")
    assert message.startswith("70 of 75 recorded pods have run")
    assert resolved.status() == {
        "source": "synthetic", "requested": "observed", "reason": message, "recorded": 75,
    }  # fmt: skip


def test_observed_replays_the_recorded_pods_in_real_time_and_size(tmp_path):
    store = FilesystemStore(tmp_path)
    observed = ObservedTrace()
    record(observed, 150, running=20)
    store.save_trace(observed.encode())
    resolved = resolve_workload(spec(source="observed", minObservedTasks=100), store)
    assert (resolved.source, resolved.tasks, resolved.observed_ok) == ("observed", 170, True)
    assert resolved.condition()[:2] == (True, "Observed")
    assert "20 still running" in resolved.reason
    source = resolved.workload
    assert isinstance(source, TraceTasks) and source.load is None and not source.scale_sizes
    batch = source.draw([3], 64.0, (16.0, 65536.0))
    assert set(np.round(batch.cpu[0], 3)) <= {1.0, 2.0}  # sizes as recorded


def test_an_unreadable_stored_trace_falls_back_with_the_reason(tmp_path):
    store = FilesystemStore(tmp_path)
    store.save_trace(b"garbage")
    resolved = resolve_workload(spec(source="observed"), store)
    assert resolved.source == "synthetic"
    assert "unreadable" in resolved.condition()[2]
