"""Which tasks a policy learns from: spec.workload.source resolved against its store.

`resolve_workload` is what the controller calls before every training or adaptation (in a
thread: it reads the store and maybe a file). Initial training, fine-tuning, selection and
validation then all use `ResolvedWorkload.workload`, and the status, the adaptation record and
the `WorkloadObserved` condition report `source`, `tasks` and `reason`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, replace

from metapolicy.observed import ObservedTrace
from metapolicy.store import CheckpointError, CheckpointStore
from metapolicy.trace_files import InvalidTrace, Trace, read_trace
from metapolicy.traces import TraceTasks, Workload
from metapolicy_operator.spec import PolicySpec

_CACHE_SIZE = 4
_trace_cache: OrderedDict[tuple, Trace] = OrderedDict()


class WorkloadUnavailable(ValueError):
    """spec.workload names a trace that cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class ResolvedWorkload:
    workload: Workload  # what training, fine-tuning, selection and validation replay
    source: str  # what is used: synthetic | trace | observed
    requested: str  # spec.workload.source
    tasks: int | None  # tasks in the replayed trace; None for the synthetic model
    observed_ok: bool | None  # source observed: is the recorded trace used? None otherwise
    reason: str  # one line for the WorkloadObserved condition and the status
    recorded: int = 0  # source observed: pods recorded so far (run or not)

    def status(self) -> dict:
        """`status.workload` of the MetaPolicy."""
        out = {"source": self.source, "requested": self.requested, "reason": self.reason}
        if self.tasks is not None:
            out["tasks"] = self.tasks
        if self.requested == "observed":
            out["recorded"] = self.recorded
        return out

    def record_fields(self) -> dict:
        """What the adaptation record says about the workload (camelCase, as in the CRD)."""
        return {"workloadSource": self.source, "workloadTasks": self.tasks}

    def condition(self) -> tuple[bool, str, str] | None:
        """(status, reason, message) of `WorkloadObserved`; None unless the source is observed."""
        if self.observed_ok is None:
            return None
        if self.observed_ok:
            return True, "Observed", self.reason
        return False, "TooFewObserved" if self.recorded else "NothingRecorded", self.reason


def resolve_workload(spec: PolicySpec, store: CheckpointStore) -> ResolvedWorkload:
    """The policy's workload. `trace`: the file, fitted to the cluster (raises
    WorkloadUnavailable if unreadable). `observed`: the recorded pods in real time and size
    once `minObservedTasks` of them have run, the synthetic model (and why) until then."""
    synthetic = spec.training.workload
    w = spec.workload_source
    if w.source == "synthetic":
        return ResolvedWorkload(synthetic, "synthetic", "synthetic", None, None, "synthetic model")
    if w.source == "trace":
        trace = _read_cached(w.trace_path, w.trace_format)
        try:
            source = TraceTasks(trace, synthetic.episode_tasks, load=synthetic.load)
        except InvalidTrace as error:
            raise WorkloadUnavailable(f"spec.workload.trace: {error}") from None
        reason = f"trace {w.trace_path}: {len(trace)} tasks, replayed at load {synthetic.load}"
        return ResolvedWorkload(source, "trace", "trace", len(trace), None, reason)
    return _observed(spec, store)


def _observed(spec: PolicySpec, store: CheckpointStore) -> ResolvedWorkload:
    synthetic = spec.training.workload
    w = spec.workload_source

    def fallback(recorded: int, why: str) -> ResolvedWorkload:
        reason = f"{why}; training uses the synthetic model until {w.min_observed_tasks} have run"
        return ResolvedWorkload(synthetic, "synthetic", "observed", None, False, reason, recorded)

    try:
        data = store.load_trace()
    except CheckpointError as error:
        return fallback(0, f"observed trace unreadable ({error})")
    if data is None:
        return fallback(0, "no pod recorded yet")
    try:
        observed = ObservedTrace.decode(data, w.max_tasks, w.max_age_seconds)
    except InvalidTrace as error:
        return fallback(0, str(error))
    ran = observed.ran()
    if ran < w.min_observed_tasks:
        return fallback(len(observed), f"{ran} of {len(observed)} recorded pods have run")
    trace = observed.to_trace()
    try:
        source = TraceTasks(trace, synthetic.episode_tasks, load=None, scale_sizes=False)
    except InvalidTrace as error:
        return fallback(len(observed), str(error))
    running = int(trace.censored.sum())
    reason = f"{ran} recorded pods ({running} still running, their run times censored)"
    return ResolvedWorkload(source, "observed", "observed", ran, True, reason, len(observed))


def _read_cached(path: str | None, trace_format: str) -> Trace:
    try:
        stat = os.stat(path or "")
    except OSError as error:
        raise WorkloadUnavailable(
            f"spec.workload.trace: cannot read trace {path}: {error.strerror}"
        ) from None
    key = (path, trace_format, stat.st_mtime_ns, stat.st_size)
    if key in _trace_cache:
        _trace_cache.move_to_end(key)
        return _trace_cache[key]
    try:
        trace = read_trace(path, trace_format)
    except InvalidTrace as error:
        raise WorkloadUnavailable(f"spec.workload.trace: {error}") from None
    _trace_cache[key] = trace
    while len(_trace_cache) > _CACHE_SIZE:
        _trace_cache.popitem(last=False)
    return trace


def with_workload(spec: PolicySpec, resolved: ResolvedWorkload) -> PolicySpec:
    """The spec with the resolved workload in its training and adaptation settings."""
    return replace(
        spec,
        training=replace(spec.training, workload=resolved.workload),
        adaptation=replace(spec.adaptation, workload=resolved.workload),
    )
