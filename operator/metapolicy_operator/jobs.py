"""Training and adaptation jobs, run in worker processes so the operator's event loop (watches,
other policies, /metrics) never waits for PyTorch.

Jobs take and return only plain data: node profiles as dicts, weights as safetensors bytes,
results as JSON-able dicts. Nothing crosses the process boundary that a checkpoint would not.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import safetensors.torch

from metapolicy.adapt import AdaptationSettings, adapt, rollback_drill
from metapolicy.checkpoint import policy_from_checkpoint, policy_to_checkpoint
from metapolicy.cluster import NodeProfile
from metapolicy.store import Checkpoint
from metapolicy.training import TrainingSettings, train_initial


@dataclass(frozen=True)
class JobResult:
    weights: bytes  # safetensors
    meta: dict[str, Any]  # checkpoint meta (node names, architecture, ...)
    record: dict[str, Any]  # what happened: AdaptationResult.to_dict() or the training summary

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(tensors=safetensors.torch.load(self.weights), meta=self.meta)


def _pack(policy, record: dict, **meta: Any) -> JobResult:
    checkpoint = policy_to_checkpoint(policy, **meta)
    weights = safetensors.torch.save({k: v.contiguous() for k, v in checkpoint.tensors.items()})
    return JobResult(weights=weights, meta=checkpoint.meta, record=record)


def train_job(nodes: list[dict], settings: TrainingSettings) -> JobResult:
    result = train_initial([NodeProfile.from_dict(n) for n in nodes], settings)
    record = {
        "event": "train",
        "new_nodes": len(nodes),
        "candidate_score": result.score,
        "best_heuristic": result.best_heuristic,
        "adaptation_time": result.seconds,
        "steps": result.steps,
        "outcome": "promoted",
        "reason": f"initial training: S={result.score:.3f}, best heuristic {result.best_heuristic}",
    }
    return _pack(result.policy, record, strategy="initial", score=result.score)


def adapt_job(
    backup_weights: bytes,
    backup_meta: dict,
    nodes: list[dict],
    settings: AdaptationSettings,
    drill: bool = False,
) -> JobResult:
    """`drill`: sabotage the candidate before validation, to prove rollback works end to end."""
    backup = policy_from_checkpoint(
        Checkpoint(tensors=safetensors.torch.load(backup_weights), meta=backup_meta)
    )
    result = adapt(
        backup,
        [NodeProfile.from_dict(n) for n in nodes],
        settings,
        perturb=rollback_drill if drill else None,
    )
    record = result.to_dict()
    return _pack(result.candidate, record, strategy=result.strategy, adaptation=record)


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
