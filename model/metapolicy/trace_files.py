"""Task traces read from files: the documented generic CSV and the Alibaba GPU-v2023 pod list.

Both become a `Trace`: tasks in arrival order, in real units (cores, MiB, seconds), each with
the attributes its pod declared at creation. A trace holds what happened; `traces.TraceTasks`
turns it into simulator episodes. The formats are described in docs/workloads.md.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metapolicy.features import (
    AGE_LOG_REF,
    ATTRIBUTE_FEATURES,
    MAX_GPUS,
    OWNER_GROUPS,
    PRIORITY_LOG_REF,
    QOS_CLASSES,
    PodAttributes,
    owner_group,
)

GENERIC = "generic"
ALIBABA = "alibaba-gpu-v2023"
FORMATS = (GENERIC, ALIBABA)

GENERIC_REQUIRED = ("arrival_s", "cpu_cores", "memory_mib", "duration_s")
GENERIC_OPTIONAL = ("qos", "gpu", "priority", "owner", "duration_hint_s", "censored")
ALIBABA_COLUMNS = (
    "name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "qos", "pod_phase",
    "creation_time", "deletion_time", "scheduled_time",
)  # fmt: skip

# Alibaba's QoS classes (as in Koordinator, its open-source scheduler) onto Kubernetes' own:
# latency-sensitive pods get their requests reserved (requests = limits): Guaranteed;
# best-effort batch pods run on what is left over and are evicted first: BestEffort; the two
# Kubernetes names the trace also uses map to themselves.
ALIBABA_QOS = {
    "LS": "Guaranteed",
    "Guaranteed": "Guaranteed",
    "Burstable": "Burstable",
    "BE": "BestEffort",
}


class InvalidTrace(ValueError):
    """A trace file that cannot be read; the message names the file, line and column."""


@dataclass(frozen=True, eq=False)
class Trace:
    """Tasks in arrival order. `duration` is the true run time, or for a censored task (still
    running when the record ended) its age then: a lower bound (see `traces.KaplanMeier`)."""

    arrival: np.ndarray  # (N,) seconds, non-decreasing
    cpu: np.ndarray  # (N,) cores
    memory: np.ndarray  # (N,) MiB
    duration: np.ndarray  # (N,) seconds
    censored: np.ndarray  # (N,) bool
    qos: np.ndarray  # (N,) int index into QOS_CLASSES
    attributes: np.ndarray  # (N, ATTRIBUTE_FEATURES) float32, PodAttributes.vector() rows
    info: Mapping = field(default_factory=dict)  # format, source, what was skipped and why

    def __post_init__(self) -> None:
        n = len(self.arrival)
        for name in ("cpu", "memory", "duration", "censored", "qos"):
            if len(getattr(self, name)) != n:
                raise InvalidTrace(
                    f"trace column {name} has {len(getattr(self, name))} rows, not {n}"
                )
        if self.attributes.shape != (n, ATTRIBUTE_FEATURES):
            raise InvalidTrace(f"trace attributes have shape {self.attributes.shape}")
        if n and np.any(np.diff(self.arrival) < 0):
            raise InvalidTrace("trace arrivals are not in order")

    def __len__(self) -> int:
        return len(self.arrival)


def from_tasks(
    arrival: Sequence[float],
    cpu: Sequence[float],
    memory: Sequence[float],
    duration: Sequence[float],
    attributes: Sequence[PodAttributes],
    censored: Sequence[bool] | None = None,
    info: Mapping | None = None,
) -> Trace:
    """A trace from per-task columns, sorted by arrival (stable: ties keep their order)."""
    arrival = np.asarray(arrival, float)
    order = np.argsort(arrival, kind="stable")
    n = len(arrival)
    censored = np.zeros(n, bool) if censored is None else np.asarray(censored, bool)
    if len(attributes) != n:
        raise InvalidTrace(f"{len(attributes)} attribute rows for {n} tasks")
    vectors = (
        np.stack([a.vector() for a in attributes])
        if n
        else np.zeros((0, ATTRIBUTE_FEATURES), np.float32)
    )
    qos = np.array([a.qos_index for a in attributes], np.int64)
    return Trace(
        arrival=arrival[order],
        cpu=np.asarray(cpu, float)[order],
        memory=np.asarray(memory, float)[order],
        duration=np.asarray(duration, float)[order],
        censored=censored[order],
        qos=qos[order],
        attributes=vectors[order],
        info=dict(info or {}),
    )


# ----- reading ----------------------------------------------------------------------------------
def read_trace(path: str | Path, format: str = "auto") -> Trace:
    """Read a trace file (plain or gzip-compressed CSV); `format` "auto" goes by the header."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InvalidTrace(f"cannot read trace {path}: {error.strerror or error}") from None
    trace = parse_trace(raw, format, str(path))
    return trace


def parse_trace(raw: bytes, format: str = "auto", name: str = "trace") -> Trace:
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise InvalidTrace(f"{name}: bad gzip data: {error}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidTrace(f"{name}: not a UTF-8 text file") from None
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    reader = csv.reader(io.StringIO("\n".join(lines)))
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise InvalidTrace(f"{name}: empty file")
    detected = detect_format(header)
    if format == "auto":
        if detected is None:
            raise InvalidTrace(
                f"{name}: unknown trace format: the header {','.join(header[:6])}... is neither "
                f"the generic CSV ({', '.join(GENERIC_REQUIRED)}) nor the Alibaba GPU-v2023 pod "
                "list"
            )
        format = detected
    if format not in FORMATS:
        raise InvalidTrace(
            f"unknown trace format {format!r}; choose from auto, {', '.join(FORMATS)}"
        )
    rows = [dict(zip(header, row, strict=False)) for row in reader if any(c.strip() for c in row)]
    parse = _parse_generic if format == GENERIC else _parse_alibaba
    missing = [
        c for c in (GENERIC_REQUIRED if format == GENERIC else ALIBABA_COLUMNS) if c not in header
    ]
    if missing:
        raise InvalidTrace(f"{name}: not a {format} trace: missing column(s) {', '.join(missing)}")
    trace = parse(rows, name)
    if len(trace) == 0:
        raise InvalidTrace(f"{name}: no usable tasks")
    return trace


def detect_format(header: Iterable[str]) -> str | None:
    columns = set(header)
    if set(GENERIC_REQUIRED) <= columns:
        return GENERIC
    if set(ALIBABA_COLUMNS) <= columns:
        return ALIBABA
    return None


def _number(row: Mapping, column: str, line: int, name: str, low: float = 0.0) -> float:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise InvalidTrace(f"{name}: line {line}: {column}={text!r} is not a number") from None
    if not math.isfinite(value) or value < low:
        raise InvalidTrace(f"{name}: line {line}: {column}={text!r} must be a number >= {low:g}")
    return value


def _parse_generic(rows: list[dict], name: str) -> Trace:
    columns: dict[str, list] = {k: [] for k in ("arrival", "cpu", "memory", "duration", "censored")}
    attributes: list[PodAttributes] = []
    for line, row in enumerate(rows, start=2):
        columns["arrival"].append(_number(row, "arrival_s", line, name, -math.inf))
        columns["cpu"].append(_number(row, "cpu_cores", line, name))
        columns["memory"].append(_number(row, "memory_mib", line, name))
        columns["duration"].append(_number(row, "duration_s", line, name))
        flag = (row.get("censored") or "").strip().lower()
        if flag not in ("", "0", "1", "true", "false"):
            raise InvalidTrace(f"{name}: line {line}: censored={flag!r} is not 0 or 1")
        columns["censored"].append(flag in ("1", "true"))
        attributes.append(_generic_attributes(row, line, name))
    info = {"format": GENERIC, "source": name, "rows": len(rows)}
    return from_tasks(**columns, attributes=attributes, info=info)


def _generic_attributes(row: Mapping, line: int, name: str) -> PodAttributes:
    qos = (row.get("qos") or "").strip() or "Burstable"
    qos = ALIBABA_QOS.get(qos, qos)
    owner = (row.get("owner") or "").strip() or "other"
    owner = owner if owner in OWNER_GROUPS else owner_group(owner)
    hint = (row.get("duration_hint_s") or "").strip()
    try:
        return PodAttributes(
            qos=qos,
            gpu=_number(row, "gpu", line, name) if (row.get("gpu") or "").strip() else 0.0,
            priority=int(_number(row, "priority", line, name, -math.inf))
            if (row.get("priority") or "").strip()
            else 0,
            owner=owner,
            duration_hint_s=_number(row, "duration_hint_s", line, name) if hint else None,
        )
    except ValueError as error:
        if isinstance(error, InvalidTrace):
            raise
        raise InvalidTrace(f"{name}: line {line}: {error}") from None


def _parse_alibaba(rows: list[dict], name: str) -> Trace:
    """The pod list as published. A pod arrives at `creation_time` and holds its requests from
    `scheduled_time` to `deletion_time` (its run time is the difference). Pods never scheduled
    (empty `scheduled_time`, phase Pending: no node ever took them, mostly for want of a GPU
    in the right place, which the simulator does not model) have no run time and are left
    out, counted in `info`. Pods still Running when the trace ends (`deletion_time` at its
    last timestamp) are censored: their run time is only a lower bound."""
    parsed = []
    for line, row in enumerate(rows, start=2):
        if not (row.get("scheduled_time") or "").strip():
            parsed.append(None)
            continue
        qos = (row.get("qos") or "").strip()
        if qos not in ALIBABA_QOS:
            raise InvalidTrace(
                f"{name}: line {line}: qos={qos!r} is not one of {', '.join(ALIBABA_QOS)}"
            )
        gpus = _number(row, "num_gpu", line, name) * _number(row, "gpu_milli", line, name) / 1000
        created = _number(row, "creation_time", line, name, -math.inf)
        scheduled = _number(row, "scheduled_time", line, name, -math.inf)
        deleted = _number(row, "deletion_time", line, name, -math.inf)
        parsed.append(
            (
                created,
                _number(row, "cpu_milli", line, name) / 1000,
                _number(row, "memory_mib", line, name),
                max(deleted - scheduled, 0.0),
                deleted,
                (row.get("pod_phase") or "").strip(),
                PodAttributes(qos=ALIBABA_QOS[qos], gpu=gpus),
            )
        )
    kept = [p for p in parsed if p is not None]
    end = max((p[4] for p in kept), default=0.0)
    censored = [p[5] == "Running" and p[4] >= end for p in kept]
    info = {
        "format": ALIBABA,
        "source": name,
        "rows": len(rows),
        "never_scheduled": len(parsed) - len(kept),
        "censored": int(sum(censored)),
    }
    return from_tasks(
        arrival=[p[0] for p in kept],
        cpu=[p[1] for p in kept],
        memory=[p[2] for p in kept],
        duration=[p[3] for p in kept],
        attributes=[p[6] for p in kept],
        censored=censored,
        info=info,
    )


def attributes_of(vector: np.ndarray) -> PodAttributes:
    """Inverse of `PodAttributes.vector()` (GPUs above MAX_GPUS read as MAX_GPUS)."""
    hint = float(np.expm1(vector[10] * AGE_LOG_REF)) if vector[9] > 0 else None
    return PodAttributes(
        qos=QOS_CLASSES[int(np.argmax(vector[:3]))],
        gpu=round(float(vector[3]) * MAX_GPUS, 4),
        priority=round(float(np.expm1(vector[4] * PRIORITY_LOG_REF))),
        owner=OWNER_GROUPS[int(np.argmax(vector[5:9]))],
        duration_hint_s=None if hint is None else round(hint, 3),
    )


def write_generic(trace: Trace, path: str | Path, attributes: bool = True) -> None:
    """The trace as a generic CSV; `attributes=False` leaves out what the pods declared (only
    the required columns and `censored`), to measure what those attributes are worth."""
    header = [*GENERIC_REQUIRED, "censored"]
    if attributes:
        header += ["qos", "gpu", "priority", "owner", "duration_hint_s"]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        for i in range(len(trace)):
            row = [
                f"{trace.arrival[i]:.3f}",
                f"{trace.cpu[i]:g}",
                f"{trace.memory[i]:g}",
                f"{trace.duration[i]:g}",
                int(trace.censored[i]),
            ]
            if attributes:
                a = attributes_of(trace.attributes[i])
                hint = "" if a.duration_hint_s is None else f"{a.duration_hint_s:g}"
                row += [a.qos, f"{a.gpu:g}", a.priority, a.owner, hint]
            out.writerow(row)
