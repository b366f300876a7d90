"""MetaPolicy status.history (the CRD's camelCase records) as rows for the timeline renderer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from metapolicy.timeline import render

# status record field -> timeline row field (metapolicy.timeline reads snake_case)
FIELDS = {
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
    """What caused a record, in the words of the demo: train, scale up/down, drill, ..."""
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


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def timeline_rows(
    history: Sequence[Mapping[str, Any]], start: datetime | None = None
) -> list[dict[str, Any]]:
    """One row per record; `time` is +MM:SS since `start` (default: the first record)."""
    rows = []
    origin = start or (_parse(history[0].get("startedAt")) if history else None)
    for record in history:
        row = {FIELDS[k]: v for k, v in record.items() if k in FIELDS}
        began = _parse(record.get("startedAt"))
        if began is not None and origin is not None:
            seconds = max(0, int((began - origin).total_seconds()))
            row["time"] = f"+{seconds // 60:02d}:{seconds % 60:02d}"
        row["event"] = event_name(record)
        rows.append(row)
    return rows


def timeline(history: Sequence[Mapping[str, Any]], start: datetime | None = None) -> str:
    return render(timeline_rows(history, start))
