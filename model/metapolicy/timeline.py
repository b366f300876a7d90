"""A readable timeline of a policy's life: one row per training or adaptation.

Rows are adaptation records in their one JSON form (`AdaptationRecord.to_json()`, the CRD's
camelCase, as stored in checkpoints and in a MetaPolicy's ``status.history``) with a ``time``
and an ``event``: the offline demo, the CLI, the e2e reports and ``kubectl metapolicy`` all
render the same records.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

COLUMNS = (
    "time",
    "event",
    "nodes",
    "strategy",
    "retention [90% CI]",
    "S new/old",
    "took",
    "served in",
    "outcome",
)


def _retention(row: Mapping) -> str:
    value = row.get("performanceRetention")
    if value is None:
        return "-"
    low, high = row.get("retentionInterval") or (value, value)
    return f"{value:.3f} [{low:.2f}, {high:.2f}]"


def _scores(row: Mapping) -> str:
    new, old = row.get("candidateScore"), row.get("backupScore")
    if new is None:
        return "-"
    return f"{new:.3f}" if old is None else f"{new:.3f}/{old:.3f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def format_row(row: Mapping) -> list[str]:
    """One record (`AdaptationRecord.to_json()`, as in status.history) plus `time` and `event`."""
    return [
        row.get("time", ""),
        row.get("event") or event_name(row),
        f"{row.get('oldNodes', 0)} -> {row.get('newNodes', 0)}",
        row.get("strategy") or "-",
        _retention(row),
        _scores(row),
        _seconds(row.get("adaptationTime", 0.0)),
        _seconds(row.get("timeToServe")),
        row.get("outcome", ""),
    ]


def render(rows: Iterable[Mapping]) -> str:
    """Fixed-width table; each row's reason goes on its own indented line below it."""
    rows = list(rows)
    cells = [list(COLUMNS)] + [format_row(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row, line in zip(rows, cells[1:], strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if row.get("reason"):
            lines.append(f"      reason: {row['reason']}")
    return "\n".join(lines)


def event_name(record: Mapping[str, Any]) -> str:
    """What caused a record, in the words of the demo: train, scale up/down, drill, ..."""
    if record.get("strategy") == "initial":
        return "train"
    trigger = record.get("trigger")
    zero_shot = "zero-shot " if trigger == "zero-shot" else ""
    if record.get("drill"):
        return f"{zero_shot}drill"
    if trigger in ("manual", "retry", "rollback-to"):
        return trigger
    old, new = record.get("oldNodes", 0), record.get("newNodes", 0)
    added, removed = record.get("addedNodes") or [], record.get("removedNodes") or []
    if added and removed:
        change = f"reshape +{len(added)}/-{len(removed)}"
    else:
        change = "scale up" if new > old else "scale down" if new < old else "refresh"
    return f"{zero_shot}{change}"


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def history_rows(
    history: Sequence[Mapping[str, Any]], start: datetime | None = None
) -> list[dict[str, Any]]:
    """The records with `time` (+MM:SS since `start`, default the first) and `event`."""
    rows = []
    origin = start or (_parse_time(history[0].get("startedAt")) if history else None)
    for record in history:
        row = dict(record)
        began = _parse_time(record.get("startedAt"))
        if began is not None and origin is not None:
            seconds = max(0, int((began - origin).total_seconds()))
            row["time"] = f"+{seconds // 60:02d}:{seconds % 60:02d}"
        row["event"] = event_name(record)
        rows.append(row)
    return rows


def render_history(history: Sequence[Mapping[str, Any]], start: datetime | None = None) -> str:
    """The timeline of a MetaPolicy's status.history."""
    return render(history_rows(history, start))


def progress(label: str) -> Callable[[str, float], None]:
    """A one-line progress display on stderr (a line per 10% when not a terminal)."""
    start, shown = time.perf_counter(), [-1]

    def update(stage: str, fraction: float) -> None:
        elapsed = time.perf_counter() - start
        if sys.stderr.isatty():
            bar = "#" * int(fraction * 30)
            sys.stderr.write(f"\r  {label}: {stage:<10} [{bar:<30}] {elapsed:5.1f}s")
            if fraction >= 1:
                sys.stderr.write("\n")
        elif int(fraction * 10) > shown[0]:
            shown[0] = int(fraction * 10)
            sys.stderr.write(f"  {label}: {stage} {fraction:4.0%} ({elapsed:.1f}s)\n")
        sys.stderr.flush()

    return update
