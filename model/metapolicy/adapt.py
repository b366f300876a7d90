"""The adaptation pipeline: resize -> (distil) -> fine-tune -> validate -> promote or roll back.

The backup is the policy serving before the change. A candidate is promoted only if its
measured retention reaches `min_retention` AND it does not score below the backup run in
masked mode on the new cluster (known nodes only; "below" means with ~95% confidence on the
paired episodes, not by noise): otherwise keeping the backup is better, and the backup can keep
serving as it is, since it never picks a node it does not know.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from metapolicy.cluster import NodeProfile, check_node_set
from metapolicy.distill import DistillSettings, distill
from metapolicy.evaluation import (
    Reference,
    episode_returns,
    evaluation_seeds,
    reference,
    retention,
)
from metapolicy.policy import SlotPolicy
from metapolicy.ppo import Freeze, PPOSettings
from metapolicy.selection import BestWeights, train_keeping_best
from metapolicy.strategies import changed_slots, choose_strategy, resize
from metapolicy.traces import Workload
from metapolicy.workload import WorkloadSpec


@dataclass(frozen=True)
class AdaptationSettings:
    strategy: str = "auto"
    budget_steps: int = 50_000
    freeze: Freeze = "gradual"
    episodes: int = 16
    min_retention: float = 0.9
    rollback: bool = True  # False: a candidate that fails validation is promoted anyway
    max_nodes: int = 20
    distill_steps: int = 8192
    select_episodes: int = 16  # 0: keep the last fine-tuned weights instead of the best
    select_every: int = 2  # updates between two scorings of the weights
    seed: int = 0
    workload: Workload = field(default_factory=WorkloadSpec)


@dataclass
class AdaptationResult:
    old_nodes: int
    new_nodes: int
    added: list[str]
    removed: list[str]
    strategy: str
    adaptation_time: float  # seconds, resize + distil + fine-tune + validation
    performance_retention: float
    retention_interval: tuple[float, float]
    candidate_score: float  # S(candidate, new cluster)
    backup_score: float  # S(backup, old cluster)
    backup_masked_score: (
        float | None
    )  # S(backup in masked mode, new cluster); None: no node in common
    outcome: str  # "promoted" | "rolled_back"
    reason: str
    timings: dict[str, float] = field(default_factory=dict)
    selected_steps: int | None = None  # fine-tune step count of the kept weights
    candidate: SlotPolicy | None = field(default=None, repr=False)
    # (steps, training seconds, mean return on the selection seeds) during fine-tuning
    curve: list[tuple[int, float, float]] = field(default_factory=list, repr=False)

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"

    def to_dict(self) -> dict:
        """JSON-friendly record (without the candidate network)."""
        data = asdict(self)
        del data["candidate"], data["curve"]
        data["retention_interval"] = list(self.retention_interval)
        return data


@dataclass(frozen=True)
class Validation:
    candidate_new: np.ndarray
    backup_old: np.ndarray
    backup_masked: np.ndarray | None
    reference_new: Reference
    reference_old: Reference


def validate(
    candidate: SlotPolicy, backup: SlotPolicy, workload: Workload | None, episodes: int
) -> Validation:
    """Paired returns of candidate and backup on the same evaluation seeds."""
    seeds = evaluation_seeds(episodes)
    new_nodes, old_nodes = candidate.nodes, backup.nodes
    overlap = set(backup.slot_names) & set(candidate.slot_names)
    return Validation(
        candidate_new=episode_returns(candidate.agent(), new_nodes, workload, seeds),
        backup_old=episode_returns(backup.agent(), old_nodes, workload, seeds),
        backup_masked=(
            episode_returns(backup.agent(), new_nodes, workload, seeds) if overlap else None
        ),
        reference_new=reference(new_nodes, workload, seeds),
        reference_old=reference(old_nodes, workload, seeds),
    )


def significantly_worse(candidate: np.ndarray, backup: np.ndarray, z: float = 1.645) -> bool:
    """Paired one-sided test on the same seeds: worse with ~95% confidence, not by noise."""
    difference = candidate - backup
    spread = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
    return bool(difference.mean() + z * spread < 0)


def decide(v: Validation, min_retention: float, rollback: bool, seed: int = 0):
    """-> (retention, candidate S, backup S, masked S, outcome, reason)."""
    kept = retention(v.candidate_new, v.reference_new, v.backup_old, v.reference_old, seed=seed)
    cand = v.reference_new.score(v.candidate_new)
    masked = None if v.backup_masked is None else v.reference_new.score(v.backup_masked)
    problems = []
    if kept.value < min_retention:
        problems.append(f"retention {kept.value:.3f} is below minRetention {min_retention:.3f}")
    if masked is not None and significantly_worse(v.candidate_new, v.backup_masked):
        problems.append(
            f"candidate S={cand:.3f} scores below the backup in masked mode S={masked:.3f}"
        )
    if not problems:
        reason = f"retention {kept.value:.3f} >= {min_retention:.3f}"
        if masked is not None:
            reason += f" and candidate S={cand:.3f} is not below backup-masked S={masked:.3f}"
        outcome = "promoted"
    elif rollback:
        outcome, reason = "rolled_back", "; ".join(problems)
    else:
        outcome, reason = (
            "promoted",
            "validation failed but rollback is disabled: " + "; ".join(problems),
        )
    return kept, cand, v.reference_old.score(v.backup_old), masked, outcome, reason


def rollback_drill(candidate: SlotPolicy) -> None:
    """A `perturb` for rollback drills: the candidate now prefers the most expensive node, a
    regression that validation must catch and roll back."""
    with torch.no_grad():
        candidate.cost_weight.fill_(100.0)


def fine_tune(
    candidate: SlotPolicy,
    nodes: Sequence[NodeProfile],
    s: AdaptationSettings,
    progress: Callable[[str, float], None],
) -> BestWeights | None:
    """PPO on the new cluster, keeping the best weights seen (the resized start included)."""
    _, best = train_keeping_best(
        candidate,
        nodes,
        s.workload,
        PPOSettings.fine_tune(s.budget_steps, s.freeze, s.seed),
        s.select_episodes,
        s.select_every,
        lambda stats: progress("fine_tune", 0.1 + 0.7 * stats.steps / max(1, s.budget_steps)),
    )
    return best


def adapt(
    backup: SlotPolicy,
    new_nodes: Sequence[NodeProfile],
    settings: AdaptationSettings | None = None,
    perturb: Callable[[SlotPolicy], None] | None = None,
    on_progress: Callable[[str, float], None] | None = None,
) -> AdaptationResult:
    """Adapt `backup` to `new_nodes` and decide whether the candidate may replace it.

    `perturb` is applied to the candidate before validation: a rollback drill (and a test hook)
    proving that a bad candidate is caught.
    """
    s = settings or AdaptationSettings()
    new_nodes = check_node_set(new_nodes, s.max_nodes)
    progress = on_progress or (lambda stage, fraction: None)
    names = [n.name for n in new_nodes]
    added, removed = changed_slots(backup.slot_names, names)
    strategy = choose_strategy(backup.slot_names, names, s.strategy)
    timings: dict[str, float] = {}
    start = clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    progress("resize", 0.0)
    candidate = resize(backup, new_nodes, strategy)
    lap("resize")
    if strategy == "knowledge_distillation" and added:
        progress("distill", 0.05)
        distill(
            candidate,
            backup,
            new_nodes,
            s.workload,
            DistillSettings(steps=s.distill_steps, seed=s.seed),
        )
        lap("distill")
    best = None
    if s.budget_steps > 0:
        best = fine_tune(candidate, new_nodes, s, progress)
        lap("fine_tune")
        if best is not None:  # scoring the weights is reported apart from training them
            timings["select"] = best.seconds
            timings["fine_tune"] -= best.seconds
    if perturb is not None:
        perturb(candidate)
    progress("validate", 0.8)
    kept, cand, base, masked, outcome, reason = decide(
        validate(candidate, backup, s.workload, s.episodes), s.min_retention, s.rollback, s.seed
    )
    lap("validate")
    progress("done", 1.0)
    return AdaptationResult(
        old_nodes=backup.size,
        new_nodes=len(new_nodes),
        added=added,
        removed=removed,
        strategy=strategy,
        adaptation_time=time.perf_counter() - start,
        performance_retention=kept.value,
        retention_interval=(kept.low, kept.high),
        candidate_score=cand,
        backup_score=base,
        backup_masked_score=masked,
        outcome=outcome,
        reason=reason,
        timings=timings,
        selected_steps=None if best is None else best.best_steps,
        candidate=candidate,
        curve=[] if best is None else best.curve,
    )
