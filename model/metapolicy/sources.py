"""Where a policy's tasks come from: `synthetic`, `trace:[FORMAT:]PATH` or `observed:STORE`.

One spelling for the command line (and anything else that names a workload in one string), and
one description (`describe`) for reports, status and the adaptation record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metapolicy.observed import ObservedTrace
from metapolicy.store import FilesystemStore
from metapolicy.trace_files import FORMATS, InvalidTrace, read_trace
from metapolicy.traces import SyntheticTasks, TraceTasks, Workload, task_source
from metapolicy.workload import WorkloadSpec

SOURCES = ("synthetic", "trace", "observed")


class InvalidWorkloadSource(ValueError):
    """A workload that cannot be loaded; the message says what and why, in one line."""


@dataclass(frozen=True)
class WorkloadChoice:
    source: str  # one of SOURCES
    path: str | None = None  # trace file, or observed store directory
    format: str = "auto"  # trace format


def parse_choice(text: str) -> WorkloadChoice:
    """`synthetic`, `trace:PATH`, `trace:FORMAT:PATH` (FORMAT one of trace_files.FORMATS) or
    `observed:STORE` (a checkpoint directory with a recorded trace)."""
    kind, _, rest = text.partition(":")
    if kind == "synthetic" and not rest:
        return WorkloadChoice("synthetic")
    if kind == "trace" and rest:
        head, _, tail = rest.partition(":")
        if head in (*FORMATS, "auto") and tail:
            return WorkloadChoice("trace", tail, head)
        return WorkloadChoice("trace", rest)
    if kind == "observed" and rest:
        return WorkloadChoice("observed", rest)
    raise InvalidWorkloadSource(
        f"unknown workload {text!r}: use synthetic, trace:PATH, trace:FORMAT:PATH "
        f"(FORMAT: {', '.join(FORMATS)}) or observed:STORE"
    )


def load_workload(
    choice: WorkloadChoice | str,
    episode_tasks: int = 256,
    load: float = 0.6,
) -> Workload:
    """The task source for a choice. A public trace is fitted to the cluster (sizes, `load`);
    an observed trace is the cluster's own pods, replayed as they came (real sizes and time)."""
    if isinstance(choice, str):
        choice = parse_choice(choice)
    try:
        if choice.source == "synthetic":
            return WorkloadSpec(load=load, episode_tasks=episode_tasks)
        if choice.source == "trace":
            trace = read_trace(choice.path, choice.format)
            return TraceTasks(trace, episode_tasks=episode_tasks, load=load)
        if choice.source == "observed":
            return observed_workload(load_observed(choice.path), episode_tasks)
    except InvalidTrace as error:
        raise InvalidWorkloadSource(str(error)) from None
    raise InvalidWorkloadSource(f"unknown workload source {choice.source!r}")


def load_observed(store_path: str | Path) -> ObservedTrace:
    path = Path(store_path)
    if not path.is_dir():
        raise InvalidWorkloadSource(f"no checkpoint store at {path}")
    data = FilesystemStore(path).load_trace()
    if data is None:
        raise InvalidWorkloadSource(f"no observed trace recorded in {path}")
    try:
        return ObservedTrace.decode(data)
    except InvalidTrace as error:
        raise InvalidWorkloadSource(f"{path}: {error}") from None


def observed_workload(observed: ObservedTrace, episode_tasks: int = 256) -> TraceTasks:
    """The recorded pods replayed in real time at their real sizes: they ran on these nodes."""
    return TraceTasks(
        observed.to_trace(), episode_tasks=episode_tasks, load=None, scale_sizes=False
    )


def describe(workload: Workload | None) -> dict:
    """What a report, the status and the adaptation record say about a workload."""
    source = task_source(workload)
    if isinstance(source, TraceTasks):
        return source.describe()
    if isinstance(source, SyntheticTasks):
        spec = source.spec
        return {
            "source": "synthetic",
            "episodeTasks": spec.episode_tasks,
            "load": spec.load,
            "taskClasses": len(spec.task_classes),
        }
    return {"source": type(source).__name__, "episodeTasks": source.episode_tasks}
