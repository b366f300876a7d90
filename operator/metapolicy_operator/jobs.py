"""Training and adaptation jobs, run in worker processes so the operator's event loop (watches,
other policies, /metrics) never waits for PyTorch.

Jobs take and return only plain data: node profiles as dicts, weights as safetensors bytes,
records as their JSON form. The one exception is the zero-shot `Validation` (numpy arrays),
handed back to the fine-tune job so both stages are judged on the same paired episodes without
replaying the backup.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metapolicy.adapt import (
    AdaptationSettings,
    Cancelled,
    StageResult,
    Trained,
    Validation,
    judge,
    refine,
    rollback_drill,
    zero_shot,
)
from metapolicy.checkpoint import policy_from_weights, policy_weights
from metapolicy.cluster import NodeProfile
from metapolicy.record import AdaptationRecord
from metapolicy.store import Checkpoint, tensors_from_bytes
from metapolicy.training import TrainingSettings, train_initial


@dataclass(frozen=True)
class JobResult:
    weights: bytes  # safetensors
    meta: dict[str, Any]  # checkpoint meta without the record (node names, architecture, ...)
    record: dict[str, Any]  # AdaptationRecord.to_json()
    validation: Validation | None = None  # the zero-shot stage's, for the fine-tune job

    def checkpoint(self, record: AdaptationRecord) -> Checkpoint:
        """The weights with `record` (the job's, with the operator's context) in the meta."""
        meta = self.meta | {"record": record.to_json()}
        return Checkpoint(tensors=tensors_from_bytes(self.weights), meta=meta)

    @property
    def outcome_record(self) -> AdaptationRecord:
        return AdaptationRecord.from_json(self.record)


@dataclass(frozen=True)
class Cancellation:
    """A fine-tune job stops at its next update once this file exists."""

    path: str

    def requested(self) -> bool:
        return Path(self.path).exists()

    def request(self) -> None:
        Path(self.path).touch()


def _pack(policy, record: AdaptationRecord, validation: Validation | None = None) -> JobResult:
    weights, meta = policy_weights(policy)
    return JobResult(weights, meta, record.to_json(), validation)


def train_job(nodes: list[dict], settings: TrainingSettings) -> JobResult:
    result = train_initial([NodeProfile.from_dict(n) for n in nodes], settings)
    return _pack(result.policy, result.record())


def zero_shot_job(
    backup_weights: bytes,
    backup_meta: dict,
    nodes: list[dict],
    settings: AdaptationSettings,
    drill: bool = False,
) -> JobResult:
    """Resize and validate, no training: the candidate the operator can serve at once.
    `drill`: sabotage it before validation, to prove rollback works end to end."""
    backup = policy_from_weights(backup_weights, backup_meta)
    stage = zero_shot(
        backup,
        [NodeProfile.from_dict(n) for n in nodes],
        settings,
        perturb=rollback_drill if drill else None,
    )
    return _pack(stage.candidate, stage.record, stage.validation)


def refine_job(
    backup_weights: bytes,
    backup_meta: dict,
    start: JobResult,
    settings: AdaptationSettings,
    drill: bool = False,
    cancel: Cancellation | None = None,
) -> JobResult | None:
    """Fine-tune after the zero-shot stage; None when cancelled."""
    backup = policy_from_weights(backup_weights, backup_meta)
    first = StageResult(
        policy_from_weights(start.weights, start.meta), start.outcome_record, start.validation
    )
    try:
        stage = refine(
            backup,
            first,
            settings,
            perturb=rollback_drill if drill else None,
            should_stop=None if cancel is None else cancel.requested,
        )
    except Cancelled:
        return None
    return _pack(stage.candidate, stage.record)


def judge_job(
    backup_weights: bytes,
    backup_meta: dict,
    start: JobResult,
    trained_weights: bytes,
    trained_meta: dict,
    trained: dict,
    settings: AdaptationSettings,
    drill: bool = False,
) -> JobResult:
    """Validate and decide on a candidate fine-tuned elsewhere (a training Job)."""
    backup = policy_from_weights(backup_weights, backup_meta)
    first = StageResult(
        policy_from_weights(start.weights, start.meta), start.outcome_record, start.validation
    )
    done = Trained(
        policy_from_weights(trained_weights, trained_meta),
        float(trained["seconds"]),
        dict(trained.get("timings") or {}),
        trained.get("selectedSteps"),
    )
    stage = judge(backup, first, done, settings, perturb=rollback_drill if drill else None)
    return _pack(stage.candidate, stage.record)


def _warm_worker() -> None:
    """Pay one-time costs at pool start, not in the first adaptation: torch import, one thread
    per worker (small networks run ~10x faster), and the optimizer's lazy dynamo import (~2 s)."""
    import torch._dynamo

    torch.set_num_threads(1)


def make_pool(workers: int) -> ProcessPoolExecutor:
    """Spawned (not forked) workers: forking a process that has started torch threads is unsafe."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_warm_worker,
    )
