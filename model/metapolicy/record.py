"""The adaptation record: what one training or adaptation did, decided and why.

One typed record travels from `adapt()` to the checkpoint manifest, the MetaPolicy's status,
the metrics and the timeline. Its JSON form (`to_json`) uses the CRD's camelCase names and is
the only serialised form, so no layer renames fields; outcomes and reasons are enumerations, so
no layer reads English to find out what happened.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    PROMOTED = "promoted"  # the candidate serves
    ROLLED_BACK = "rolled_back"  # validation rejected it; the backup keeps serving
    KEPT_ZERO_SHOT = "kept-zero-shot"  # the fine-tune was not better than the served zero-shot
    INCONCLUSIVE = "inconclusive"  # neither clearly above nor below minRetention: a human decides
    ABORTED = "aborted"  # an inconclusive candidate discarded by a user
    CANCELLED = "cancelled"  # a background fine-tune stopped by a newer node change
    FAILED = "failed"  # the training could not run (a training Job failed or was deleted)

    @property
    def serving(self) -> bool:
        """Did this record's candidate become the active version?"""
        return self is Outcome.PROMOTED


class Reason(StrEnum):
    """Machine-readable reasons; the record's `reason` says the same in words, with numbers."""

    INITIAL_TRAINING = "initial_training"
    VALIDATED = "validated"  # retention >= minRetention and not below the masked backup
    RETENTION_BELOW_THRESHOLD = "retention_below_threshold"
    WORSE_THAN_MASKED_BACKUP = "worse_than_masked_backup"
    RETENTION_INCONCLUSIVE = "retention_inconclusive"
    ROLLBACK_DISABLED = "rollback_disabled"  # failed validation, promoted anyway by the spec
    NOT_BETTER_THAN_ZERO_SHOT = "not_better_than_zero_shot"
    BETTER_THAN_ZERO_SHOT = "better_than_zero_shot"
    MANUAL_PROMOTE = "manual_promote"
    MANUAL_ABORT = "manual_abort"
    ROLLBACK_TO = "rollback_to"  # a stored version made active again by a user
    SUPERSEDED = "superseded"  # a newer node change cancelled the work
    TRAINING_JOB_FAILED = "training_job_failed"


# Rollback reasons, the label values of metapolicy_rollbacks_total.
ROLLBACK_REASONS = (Reason.RETENTION_BELOW_THRESHOLD, Reason.WORSE_THAN_MASKED_BACKUP)

_JSON_NAMES = {"added": "addedNodes", "removed": "removedNodes"}


def _camel(name: str) -> str:
    return _JSON_NAMES.get(name) or re.sub(r"_([a-z])", lambda m: m[1].upper(), name)


@dataclass(frozen=True)
class AdaptationRecord:
    """Everything `status.lastAdaptation` shows, for trainings and adaptations alike.

    The library fills what it measured; the operator adds where and when (version, attempt,
    trigger, times, node-set hash) with `with_context`.
    """

    outcome: Outcome
    reason: str
    reason_codes: tuple[Reason, ...] = ()
    strategy: str = "initial"
    old_nodes: int = 0
    new_nodes: int = 0
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    adaptation_time: float = 0.0  # seconds of pipeline work
    performance_retention: float | None = None
    retention_interval: tuple[float, float] | None = None
    candidate_score: float | None = None  # S(candidate, new cluster)
    backup_score: float | None = None  # S(backup, old cluster)
    backup_masked_score: float | None = None  # S(backup in masked mode, new cluster)
    best_heuristic: str | None = None
    steps: int | None = None  # training steps (initial training)
    selected_steps: int | None = None  # fine-tune step count of the kept weights
    timings: Mapping[str, float] = field(default_factory=dict)
    workload_source: str | None = None
    workload_tasks: int | None = None
    # ----- filled by the operator ----------------------------------------------------------
    version: int | None = None  # the stored version of this record's candidate
    parent_version: int | None = None  # the version serving when it started (the backup)
    attempt: int | None = None
    trigger: str | None = None  # initial | nodes | manual | retry | zero-shot | rollback-to
    started_at: str | None = None
    finished_at: str | None = None
    node_set_hash: str | None = None
    drill: bool | None = None
    time_to_serve: float | None = None  # seconds from start to this version being active
    recovered: bool | None = None  # rebuilt from the store after status lost it

    def with_context(self, **context: Any) -> AdaptationRecord:
        return replace(self, **context)

    def to_json(self, camel: bool = True) -> dict[str, Any]:
        """camelCase as in the CRD (status, manifests), None omitted since the CRD has no
        nullable fields; `camel=False` gives the snake_case, None-keeping form of the command
        line's `--json` output. Enums as strings either way."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if camel and (value is None or (f.name == "timings" and not value)):
                continue
            if isinstance(value, tuple):
                value = [str(v) if isinstance(v, StrEnum) else v for v in value]
            elif isinstance(value, StrEnum):
                value = str(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[_camel(f.name) if camel else f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AdaptationRecord:
        """Inverse of `to_json`; unknown keys are ignored, unknown enum values kept as text."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = _camel(f.name)
            if key not in data:
                continue
            value = data[key]
            if f.name == "outcome":
                value = _enum(Outcome, value)
            elif f.name == "reason_codes":
                value = tuple(_enum(Reason, v) for v in value or ())
            elif f.name in ("added", "removed"):
                value = tuple(value or ())
            elif f.name == "retention_interval" and value is not None:
                value = (float(value[0]), float(value[1]))
            values[f.name] = value
        values.setdefault("outcome", Outcome.PROMOTED)
        values.setdefault("reason", "")
        return cls(**values)

    @property
    def rollback_reasons(self) -> tuple[Reason, ...]:
        if self.outcome is not Outcome.ROLLED_BACK:
            return ()
        return tuple(r for r in self.reason_codes if r in ROLLBACK_REASONS)


def _enum(kind: type[StrEnum], value: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        return value
