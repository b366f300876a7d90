"""Status patches: conditions, the adaptation record in the CRD's camelCase, bounded history."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

HISTORY_LIMIT = 50  # the CRD's maxItems

# AdaptationResult / job record fields -> status.lastAdaptation fields
RECORD_FIELDS = {
    "old_nodes": "oldNodes",
    "new_nodes": "newNodes",
    "added": "addedNodes",
    "removed": "removedNodes",
    "strategy": "strategy",
    "adaptation_time": "adaptationTime",
    "performance_retention": "performanceRetention",
    "retention_interval": "retentionInterval",
    "candidate_score": "candidateScore",
    "backup_score": "backupScore",
    "backup_masked_score": "backupMaskedScore",
    "outcome": "outcome",
    "reason": "reason",
}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def adaptation_record(record: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """Job record -> status record; None values are dropped (the schema has no nullables)."""
    out = {RECORD_FIELDS[k]: v for k, v in record.items() if k in RECORD_FIELDS and v is not None}
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def with_history(history: Sequence[Mapping] | None, record: Mapping) -> list[Mapping]:
    """Newest last, at most HISTORY_LIMIT entries."""
    return [*(history or []), dict(record)][-HISTORY_LIMIT:]


def condition(
    existing: Sequence[Mapping] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
) -> list[dict]:
    """Set one condition; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    conditions = [dict(c) for c in existing or [] if c.get("type") != type_]
    previous = next((c for c in existing or [] if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != value
    conditions.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_iso() if changed else previous.get("lastTransitionTime"),
            "observedGeneration": generation,
        }
    )
    return sorted(conditions, key=lambda c: c["type"])


def conditions_for(
    existing: Sequence[Mapping] | None,
    *,
    ready: tuple[bool, str, str],
    adapting: tuple[bool, str, str],
    degraded: tuple[bool, str, str],
    generation: int | None,
) -> list[dict]:
    out = list(existing or [])
    for type_, (status, reason, message) in (
        ("Ready", ready),
        ("Adapting", adapting),
        ("Degraded", degraded),
    ):
        out = condition(out, type_, status, reason, message, generation)
    return out
