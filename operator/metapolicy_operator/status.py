"""Status building blocks: conditions and timestamps (the records come as `AdaptationRecord`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

HISTORY_LIMIT = 50  # the CRD's maxItems


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_time() -> str:
    """A record's start or end, to the millisecond: records are ordered by when they finished,
    and a manual rollback within the second of a promotion must still come after it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    paused: tuple[bool, str, str],
    generation: int | None,
) -> list[dict]:
    out = list(existing or [])
    for type_, (status, reason, message) in (
        ("Ready", ready),
        ("Adapting", adapting),
        ("Degraded", degraded),
        ("Paused", paused),
    ):
        out = condition(out, type_, status, reason, message, generation)
    return out
