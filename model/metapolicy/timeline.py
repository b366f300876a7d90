"""A readable timeline of a policy's life: one row per training or adaptation.

Rows use this library's snake_case names; :func:`history_rows` maps the records of a
MetaPolicy's ``status.history`` (the CRD's camelCase) onto them, for the demo, the e2e
reports and ``kubectl metapolicy``.
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
    "outcome",
)


def _retention(row: Mapping) -> str:
    value = row.get("performance_retention")
    if value is None:
        return "-"
    low, high = row.get("retention_interval") or (value, value)
    return f"{value:.3f} [{low:.2f}, {high:.2f}]"


def _scores(row: Mapping) -> str:
    new, old = row.get("candidate_score"), row.get("backup_score")
    if new is None:
        return "-"
    return f"{new:.3f}" if old is None else f"{new:.3f}/{old:.3f}"


def format_row(row: Mapping) -> list[str]:
    return [
        row.get("time", ""),
        row.get("event", "adapt"),
        f"{row.get('old_nodes', 0)} -> {row.get('new_nodes', 0)}",
        row.get("strategy") or "-",
        _retention(row),
        _scores(row),
        f"{row.get('adaptation_time', 0.0):.1f}s",
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


#: status.history record field -> timeline row field
STATUS_FIELDS = {
    "oldNodes": "old_nodes",
    "newNodes": "new_nodes",
    "strategy": "strategy",
    "performanceRetention": "performance_retention",
    "retentionInterval": "retention_interval",
    "candidateScore": "candidate_score",
    "backupScore": "backup_score",
    "adaptationTime": "adaptation_time",
    "outcome": "outcome",
    "reason": "reason",
}


def event_name(record: Mapping[str, Any]) -> str:
    """What caused a status record, in the words of the demo: train, scale up/down, drill, ..."""
    if record.get("strategy") == "initial":
        return "train"
    if record.get("drill"):
        return "drill"
    if record.get("trigger") == "manual":
        return "manual"
    if record.get("trigger") == "retry":
        return "retry"
    old, new = record.get("oldNodes", 0), record.get("newNodes", 0)
    added, removed = record.get("addedNodes") or [], record.get("removedNodes") or []
    if added and removed:
        return f"reshape +{len(added)}/-{len(removed)}"
    return "scale up" if new > old else "scale down" if new < old else "refresh"


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def history_rows(
    history: Sequence[Mapping[str, Any]], start: datetime | None = None
) -> list[dict[str, Any]]:
    """One row per status record; ``time`` is +MM:SS since ``start`` (default: the first)."""
    rows = []
    origin = start or (_parse_time(history[0].get("startedAt")) if history else None)
    for record in history:
        row = {STATUS_FIELDS[k]: v for k, v in record.items() if k in STATUS_FIELDS}
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
