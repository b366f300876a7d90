"""What a reconcile should do, decided from stored state only (level-triggered, no counters).

Inputs are what the operator can always re-read after a restart: the spec, the active
checkpoint's node names, the eligible node names, the records in the checkpoint store (never
status, which any writer may trim or lose) and a pending manual adapt request. The output is
one plan; nothing here touches the API or the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from metapolicy.adapt import AdaptationSettings
from metapolicy.strategies import check_strategy, choose_strategy, escalate
from metapolicy_operator.spec import PolicySpec


@dataclass(frozen=True)
class Plan:
    action: str  # "train" | "adapt" | "in_sync" | "wait" | "degraded" | "paused"
    phase: str  # the phase to show while (or instead of) acting
    reason: str  # CamelCase reason for conditions and Events
    message: str
    strategy: str | None = None
    attempt: int = 1
    trigger: str = "nodes"  # "nodes" | "manual" | "retry"
    drill: bool = False
    retry_in: float | None = None  # seconds until the next attempt is due ("wait")


def attempt_settings(adaptation: AdaptationSettings, plan: Plan) -> AdaptationSettings:
    """The plan's strategy, and a seed of its own for each retry.

    Escalating is not always a change: with no node added, or none in common, every strategy
    builds the same candidate, and a retry with the same seed repeated the same fine-tune and
    the same rollback. Validation episodes do not depend on the seed, so attempts stay
    comparable.
    """
    return replace(adaptation, strategy=plan.strategy, seed=adaptation.seed + plan.attempt - 1)


def node_set_hash(names: Sequence[str]) -> str:
    """Identity of a node set, recorded with each adaptation to count attempts per set."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


FAILURES = ("rolled_back", "aborted", "failed")
UNTIL_CHANGED = " until the node set or the spec changes"
#: Records that say nothing about whether an attempt at a node set failed: the zero-shot stage
#: of an attempt (its fine-tune stage decides), a cancelled fine-tune, a pending decision.
NEUTRAL = ("cancelled", "inconclusive")


def failed_attempts(records: Sequence[Mapping], target: str) -> list[Mapping]:
    """Trailing failed attempts at this node set (a success or another set resets it)."""
    streak: list[Mapping] = []
    for record in reversed(records):
        neutral = record.get("trigger") == "zero-shot" or record.get("outcome") in NEUTRAL
        if neutral and record.get("nodeSetHash") in (target, None):
            continue
        if record.get("nodeSetHash") != target or record.get("outcome") not in FAILURES:
            break
        streak.append(record)
    return streak


def undecided(records: Sequence[Mapping], target: str) -> Mapping | None:
    """The inconclusive candidate for this node set that no promote or abort has decided."""
    decided: set[int] = set()
    for record in reversed(records):
        if record.get("trigger") in ("promote", "abort"):
            decided.add(record.get("version"))
            continue
        if record.get("nodeSetHash") != target or record.get("trigger") == "zero-shot":
            continue
        if record.get("outcome") == "inconclusive" and record.get("version") not in decided:
            return record
        return None
    return None


def _backing_off(
    spec: PolicySpec,
    records: Sequence[Mapping],
    desired: Sequence[str],
    now: datetime,
    training: bool = False,
) -> Plan | None:
    """A wait while the last attempts at this node set failed: all of maxAttempts, or the
    last one less than backoffSeconds ago."""
    failures = failed_attempts(records, node_set_hash(desired))
    if not failures:
        return None
    if len(failures) >= spec.max_attempts:
        if training:
            message = f"{len(failures)} training attempts failed; nothing serves"
            return Plan("wait", "Failed", "TrainingFailing", message + UNTIL_CHANGED)
        message = (
            f"{len(failures)} attempts at this node set were rolled back; the previous policy "
            "keeps serving in masked mode"
        )
        return Plan("wait", "RolledBack", "AdaptationFailing", message + UNTIL_CHANGED)
    due = _parse_time(failures[0].get("finishedAt"))
    wait = spec.backoff_seconds - ((now - due).total_seconds() if due else spec.backoff_seconds)
    if wait <= 0:
        return None
    how = "" if training else " with a stronger strategy"
    phase = "Pending" if training else "RolledBack"
    return Plan("wait", phase, "BackingOff", f"retrying in {wait:.0f}s{how}", retry_in=wait)


def plan(
    spec: PolicySpec,
    active: Sequence[str] | None,
    desired: Sequence[str],
    records: Sequence[Mapping],
    request: Mapping | None = None,
    now: datetime | None = None,
) -> Plan:
    now = now or datetime.now(UTC)
    count = len(desired)
    if count > spec.max_nodes:
        keeps = "the active policy keeps serving" if active else "nothing can be trained"
        return Plan(
            "degraded",
            "Degraded",
            "TooManyNodes",
            f"{count} eligible nodes exceed maxNodes={spec.max_nodes}; {keeps}",
        )
    if count == 0:
        phase, keeps = ("Degraded", "the active policy is kept") if active else ("Pending", "")
        return Plan("degraded", phase, "NoEligibleNodes", f"no eligible nodes; {keeps}".strip("; "))
    if spec.paused:
        serving = "the active version keeps serving" if active else "nothing is trained"
        message = f"spec.paused: no training or adaptation starts; {serving}"
        return Plan("paused", "Paused", "Paused", message)
    if active is None:
        waiting = _backing_off(spec, records, desired, now, training=True)
        if waiting is not None:
            return waiting
        return Plan("train", "Training", "InitialTraining", f"training on {count} nodes")
    if request is not None:
        strategy = request.get("strategy") or "auto"
        if strategy == "auto":
            strategy = choose_strategy(active, desired, spec.adaptation.strategy)
        return Plan(
            "adapt",
            "Adapting",
            "ManualRequest",
            f"manual request: {request.get('reason') or 'no reason given'}",
            strategy=check_strategy(strategy),
            trigger="manual",
            drill=bool(request.get("drill")),
        )
    if sorted(active) == sorted(desired):
        return Plan("in_sync", "Ready", "InSync", f"serving {count} nodes")
    target = node_set_hash(desired)
    waiting = undecided(records, target)
    if waiting is not None:
        return Plan(
            "wait",
            "Paused",
            "Inconclusive",
            f"candidate version {waiting.get('version')} is inconclusive "
            f"({waiting.get('reason', '')}); the previous version keeps serving until it is "
            "promoted (metapolicy.dev/promote) or aborted (metapolicy.dev/abort)",
        )
    waiting = _backing_off(spec, records, desired, now)
    if waiting is not None:
        return waiting
    failures = failed_attempts(records, target)
    if failures:
        strategy = escalate(failures[0].get("strategy") or "zero_padding")
        return Plan(
            "adapt",
            "Adapting",
            "Retry",
            f"attempt {len(failures) + 1} after a rollback",
            strategy=strategy,
            attempt=len(failures) + 1,
            trigger="retry",
        )
    strategy = choose_strategy(active, desired, spec.adaptation.strategy)
    return Plan("adapt", "Adapting", "NodeSetChanged", f"{len(active)} -> {count} nodes", strategy)
