"""The adaptation pipeline, serve first: resize -> validate the zero-shot candidate (serve it
if it passes) -> (distil) -> fine-tune -> validate -> promote, keep the zero-shot, or roll back.

The backup is the policy serving before the change. A candidate passes validation only if its
measured retention is clearly at or above `min_retention` (the whole bootstrap interval) AND it
does not score below the backup run in masked mode on the new cluster (known nodes only;
"below" means with ~95% confidence on the paired episodes, not by noise): otherwise keeping the
backup is better, and the backup can keep serving as it is, since it never picks a node it
does not know. An interval that straddles `min_retention` is inconclusive: `on_inconclusive`
says whether to wait for a person (pause), roll back or promote.

The zero-shot candidate (the resized network, no training) is validated within seconds and can
serve at once; the fine-tuned one replaces it only if it is significantly better on the same
paired episodes, else the record says `kept-zero-shot`. Node-set fine-tuning moved retention by
-0.024..+0.017 in the retention benchmark: waiting for it would leave a new node idle for tens
of seconds for nothing.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from metapolicy import replays
from metapolicy.cluster import NodeProfile, check_node_set
from metapolicy.compact import snap
from metapolicy.device import resolve_device
from metapolicy.distill import DistillSettings, distill
from metapolicy.evaluation import (
    Reference,
    Retention,
    episode_returns,
    evaluation_seeds,
    reference_stats,
    retention,
)
from metapolicy.policy import SlotPolicy, check_capacity
from metapolicy.ppo import Freeze, PPOSettings
from metapolicy.record import AdaptationRecord, Outcome, Reason
from metapolicy.replays import REPLAYS
from metapolicy.selection import BestWeights, train_keeping_best
from metapolicy.strategies import changed_slots, choose_strategy, resize
from metapolicy.subclusters import DEFAULT_SIZE, sampled
from metapolicy.traces import Workload
from metapolicy.workload import WorkloadSpec

OnInconclusive = Literal["pause", "rollback", "promote"]
ON_INCONCLUSIVE: tuple[str, ...] = ("pause", "rollback", "promote")


class Cancelled(Exception):
    """A background fine-tune was stopped (a newer node change makes it pointless)."""


@dataclass(frozen=True)
class AdaptationSettings:
    strategy: str = "auto"
    budget_steps: int = 50_000
    freeze: Freeze = "gradual"
    episodes: int = 16
    min_retention: float = 0.9
    rollback: bool = True  # False: a candidate that fails validation is promoted anyway
    on_inconclusive: OnInconclusive = "pause"
    max_nodes: int = 20
    distill_steps: int = 8192
    select_episodes: int = 16  # 0: keep the last fine-tuned weights instead of the best
    select_every: int = 2  # updates between two scorings of the weights
    seed: int = 0
    workload: Workload = field(default_factory=WorkloadSpec)
    # Nodes per episode on a bigger cluster, for fine-tuning and validation alike (node-set
    # only; 0: always the whole cluster). Validation episodes draw their sub-cluster from their
    # seed, so the candidate and the backup in masked mode meet the same ones.
    subcluster: int = DEFAULT_SIZE
    device: str = "auto"  # metapolicy.device: where the fine-tune (and distillation) runs


def episodes_view(policy: SlotPolicy, s: AdaptationSettings) -> Sequence[NodeProfile]:
    """The policy's nodes as its episodes see them: `SubClusters` when there are more nodes
    than `s.subcluster` and the architecture can play them, the whole cluster otherwise."""
    return sampled(policy.nodes, s.subcluster if policy.scores_subsets else None, s.seed)


@dataclass(frozen=True)
class Validation:
    candidate_new: np.ndarray
    backup_old: np.ndarray
    backup_masked: np.ndarray | None
    reference_new: Reference
    reference_old: Reference


def validate(
    candidate: SlotPolicy,
    backup: SlotPolicy,
    workload: Workload | None,
    episodes: int,
    subcluster: int | None = None,
) -> Validation:
    """Paired returns of candidate and backup on the same evaluation seeds (and, on a big
    cluster, the same sub-clusters of `subcluster` nodes: the seed picks them)."""
    seeds = evaluation_seeds(episodes)
    size = subcluster if candidate.scores_subsets else None
    new_nodes, old_nodes = sampled(candidate.nodes, size), sampled(backup.nodes, size)
    overlap = set(backup.slot_names) & set(candidate.slot_names)
    # Two simulator batches, one per cluster, each with the reference heuristics in it; the
    # backup's side is usually what its own validation played (`metapolicy.replays`).
    on_new = {"candidate": candidate.agent()} | ({"masked": backup.agent()} if overlap else {})
    reference_new, new = reference_stats(new_nodes, workload, seeds, on_new)
    REPLAYS.put(
        replays.key(candidate, candidate.nodes, workload, seeds, size),
        new["candidate"].returns,
        reference_new,
    )
    old_key = replays.key(backup, backup.nodes, workload, seeds, size)
    if (replayed := REPLAYS.get(old_key)) is not None:
        backup_old, reference_old = replayed
    else:
        reference_old, old = reference_stats(old_nodes, workload, seeds, {"backup": backup.agent()})
        backup_old = old["backup"].returns
        REPLAYS.put(old_key, backup_old, reference_old)
    return Validation(
        candidate_new=new["candidate"].returns,
        backup_old=backup_old,
        backup_masked=new["masked"].returns if overlap else None,
        reference_new=reference_new,
        reference_old=reference_old,
    )


def significantly_worse(candidate: np.ndarray, backup: np.ndarray, z: float = 1.645) -> bool:
    """Paired one-sided test on the same seeds: worse with ~95% confidence, not by noise."""
    difference = candidate - backup
    spread = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
    return bool(difference.mean() + z * spread < 0)


def significantly_better(candidate: np.ndarray, other: np.ndarray) -> bool:
    return significantly_worse(other, candidate)


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    codes: tuple[Reason, ...]
    retention: Retention
    candidate_score: float
    backup_score: float
    backup_masked_score: float | None


def decide(v: Validation, s: AdaptationSettings) -> Decision:
    """Promote, roll back or call it inconclusive, from the paired validation returns."""
    kept = retention(v.candidate_new, v.reference_new, v.backup_old, v.reference_old, seed=s.seed)
    cand = v.reference_new.score(v.candidate_new)
    masked = None if v.backup_masked is None else v.reference_new.score(v.backup_masked)
    backup = v.reference_old.score(v.backup_old)
    low, high, least = kept.low, kept.high, s.min_retention
    interval = f"retention {kept.value:.3f} [{low:.3f}, {high:.3f}]"
    failures: list[tuple[Reason, str]] = []
    if high < least or kept.value < least <= low:
        failures.append(
            (Reason.RETENTION_BELOW_THRESHOLD, f"{interval} is below minRetention {least:.3f}")
        )
    if masked is not None and significantly_worse(v.candidate_new, v.backup_masked):
        failures.append(
            (
                Reason.WORSE_THAN_MASKED_BACKUP,
                f"candidate S={cand:.3f} scores below the backup in masked mode S={masked:.3f}",
            )
        )
    inconclusive = not failures and low < least

    def made(outcome: Outcome, codes: list[Reason], reason: str) -> Decision:
        return Decision(outcome, reason, tuple(codes), kept, cand, backup, masked)

    if failures:
        codes, words = [c for c, _ in failures], "; ".join(w for _, w in failures)
        if s.rollback:
            return made(Outcome.ROLLED_BACK, codes, words)
        return made(
            Outcome.PROMOTED,
            [*codes, Reason.ROLLBACK_DISABLED],
            "validation failed but rollback is disabled: " + words,
        )
    if inconclusive:
        words = f"{interval} straddles minRetention {least:.3f}"
        codes = [Reason.RETENTION_INCONCLUSIVE]
        if not s.rollback:  # a candidate that fails is promoted then: one that may pass too
            return made(Outcome.PROMOTED, [*codes, Reason.ROLLBACK_DISABLED], words)
        if s.on_inconclusive == "promote":
            return made(Outcome.PROMOTED, codes, words + "; onInconclusive promotes")
        if s.on_inconclusive == "rollback":
            return made(Outcome.ROLLED_BACK, codes, words + "; onInconclusive rolls back")
        return made(Outcome.INCONCLUSIVE, codes, words + "; waiting for promote or abort")
    reason = f"{interval} >= {least:.3f}"
    if masked is not None:
        reason += f" and candidate S={cand:.3f} is not below backup-masked S={masked:.3f}"
    return made(Outcome.PROMOTED, [Reason.VALIDATED], reason)


def against_zero_shot(final: Decision, v: Validation, zero_shot: StageResult) -> Decision:
    """The zero-shot candidate serves: the fine-tuned one replaces it only if it passes AND is
    significantly better on the same paired episodes; otherwise the zero-shot is kept."""
    better = significantly_better(v.candidate_new, zero_shot.validation.candidate_new)
    if final.outcome is Outcome.PROMOTED and better:
        return replace(
            final,
            codes=(*final.codes, Reason.BETTER_THAN_ZERO_SHOT),
            reason=f"{final.reason}; significantly better than the zero-shot candidate "
            f"(S={final.candidate_score:.3f} vs {zero_shot.record.candidate_score:.3f})",
        )
    why = (
        f"not significantly better than the zero-shot candidate "
        f"(S={final.candidate_score:.3f} vs {zero_shot.record.candidate_score:.3f})"
        if final.outcome is Outcome.PROMOTED
        else final.reason
    )
    return replace(
        final,
        outcome=Outcome.KEPT_ZERO_SHOT,
        codes=(*final.codes, Reason.NOT_BETTER_THAN_ZERO_SHOT),
        reason=f"{why}; version of the zero-shot candidate keeps serving",
    )


def rollback_drill(candidate: SlotPolicy) -> None:
    """A `perturb` for rollback drills: the candidate now prefers the most expensive node and
    ignores the filter, so it sends pods where they do not fit: a regression that validation
    must catch and roll back. Within the filter no rule is reliably bad enough to be caught
    on a few episodes: the costliest node a pod fits is the fullest, i.e. bin packing."""
    with torch.no_grad():
        candidate.cost_weight.fill_(100.0)
    candidate.filtered = False


@dataclass
class StageResult:
    """One validated candidate: the zero-shot one, or the fine-tuned one after it."""

    candidate: SlotPolicy = field(repr=False)
    record: AdaptationRecord
    validation: Validation = field(repr=False)
    # (steps, training seconds, mean return on the selection seeds) during fine-tuning
    curve: list[tuple[int, float, float]] = field(default_factory=list, repr=False)

    @property
    def promoted(self) -> bool:
        return self.record.outcome is Outcome.PROMOTED


def _record(
    backup: SlotPolicy,
    new_nodes: Sequence[NodeProfile],
    strategy: str,
    decision: Decision,
    seconds: float,
    timings: dict[str, float],
    **extra,
) -> AdaptationRecord:
    added, removed = changed_slots(backup.slot_names, [n.name for n in new_nodes])
    return AdaptationRecord(
        outcome=decision.outcome,
        reason=decision.reason,
        reason_codes=decision.codes,
        strategy=strategy,
        old_nodes=backup.size,
        new_nodes=len(new_nodes),
        added=tuple(added),
        removed=tuple(removed),
        adaptation_time=seconds,
        performance_retention=decision.retention.value,
        retention_interval=(decision.retention.low, decision.retention.high),
        candidate_score=decision.candidate_score,
        backup_score=decision.backup_score,
        backup_masked_score=decision.backup_masked_score,
        timings=dict(timings),
        **extra,
    )


class _Laps:
    def __init__(self) -> None:
        self.start = self.clock = time.perf_counter()
        self.timings: dict[str, float] = {}

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = now - self.clock
        self.clock = now

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def zero_shot(
    backup: SlotPolicy,
    new_nodes: Sequence[NodeProfile],
    settings: AdaptationSettings | None = None,
    perturb: Callable[[SlotPolicy], None] | None = None,
) -> StageResult:
    """Resize with the strategy's initialisation and validate, no training: seconds, not
    minutes, so a changed node set can be served at once if this candidate passes."""
    s = settings or AdaptationSettings()
    new_nodes = check_node_set(new_nodes, s.max_nodes)
    check_capacity(backup.architecture, len(new_nodes))
    strategy = choose_strategy(backup.slot_names, [n.name for n in new_nodes], s.strategy)
    laps = _Laps()
    candidate = snap(resize(backup, new_nodes, strategy))  # validated as it will be stored
    laps("resize")
    if perturb is not None:
        perturb(candidate)
    v = validate(candidate, backup, s.workload, s.episodes, s.subcluster)
    decision = decide(v, s)
    laps("validate")
    record = _record(backup, new_nodes, strategy, decision, laps.total, laps.timings)
    return StageResult(candidate, record, v)


def fine_tune(
    candidate: SlotPolicy,
    nodes: Sequence[NodeProfile],
    s: AdaptationSettings,
    progress: Callable[[str, float], None],
    should_stop: Callable[[], bool] | None = None,
) -> BestWeights | None:
    """PPO on the new cluster, keeping the best weights seen (the resized start included)."""

    def update(stats) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("fine-tune cancelled")
        progress("fine_tune", 0.1 + 0.7 * stats.steps / max(1, s.budget_steps))

    _, best = train_keeping_best(
        candidate,
        nodes,
        s.workload,
        PPOSettings.fine_tune(s.budget_steps, s.freeze, s.seed),
        s.select_episodes,
        s.select_every,
        update,
    )
    return best


@dataclass
class Trained:
    """A candidate after distillation and fine-tuning, not yet judged."""

    candidate: SlotPolicy = field(repr=False)
    seconds: float
    timings: dict[str, float]
    selected_steps: int | None = None
    curve: list[tuple[int, float, float]] = field(default_factory=list, repr=False)


def train_candidate(
    backup: SlotPolicy,
    start: AdaptationRecord,
    new_nodes: Sequence[NodeProfile],
    settings: AdaptationSettings | None = None,
    on_progress: Callable[[str, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Trained:
    """(Distil,) fine-tune from the zero-shot candidate of `start`: the heavy half of the
    second stage, which can run anywhere (a worker, a Kubernetes Job on a GPU node) since it
    needs only the backup, the zero-shot record and the nodes. Raises `Cancelled` as soon as
    `should_stop()` says so."""
    s = settings or AdaptationSettings()
    progress = on_progress or (lambda stage, fraction: None)
    device = resolve_device(s.device, "adaptation.device")
    # The zero-shot candidate again (resizing is deterministic), unsabotaged in a drill.
    candidate = snap(resize(backup, new_nodes, start.strategy)).to(device)
    view = episodes_view(candidate, s)
    laps = _Laps()
    if start.strategy == "knowledge_distillation" and start.added:
        progress("distill", 0.05)
        # the caller's backup stays where it is (it keeps serving, or is judged against)
        teacher = backup if device.type == "cpu" else copy.deepcopy(backup).to(device)
        distill(
            candidate,
            teacher,
            view,
            s.workload,
            DistillSettings(steps=s.distill_steps, seed=s.seed),
        )
        laps("distill")
    best = None
    if s.budget_steps > 0:
        best = fine_tune(candidate, view, s, progress, should_stop)
        laps("fine_tune")
        if best is not None:  # scoring the weights is reported apart from training them
            laps.timings["select"] = best.seconds
            laps.timings["fine_tune"] -= best.seconds
    snap(candidate.cpu())  # judged as it will be stored
    return Trained(
        candidate,
        laps.total,
        laps.timings,
        None if best is None else best.best_steps,
        [] if best is None else best.curve,
    )


def judge(
    backup: SlotPolicy,
    start: StageResult,
    trained: Trained,
    settings: AdaptationSettings | None = None,
    perturb: Callable[[SlotPolicy], None] | None = None,
) -> StageResult:
    """Validate the trained candidate on the zero-shot stage's paired episodes (the backup's
    returns and the references are reused, same seeds, same clusters) and decide: the gate,
    always where the operator runs, whoever trained the candidate."""
    s = settings or AdaptationSettings()
    candidate, new_nodes = trained.candidate, start.candidate.nodes
    if perturb is not None:
        perturb(candidate)
    laps = _Laps()
    seeds = evaluation_seeds(s.episodes)
    view = episodes_view(candidate, s)
    v = replace(
        start.validation,
        candidate_new=episode_returns(candidate.agent(), view, s.workload, seeds),
    )
    size = s.subcluster if candidate.scores_subsets else None
    REPLAYS.put(
        replays.key(candidate, candidate.nodes, s.workload, seeds, size),
        v.candidate_new,
        v.reference_new,
    )
    decision = decide(v, s)
    if start.promoted:
        decision = against_zero_shot(decision, v, start)
    laps("validate")
    record = _record(
        backup,
        new_nodes,
        start.record.strategy,
        decision,
        start.record.adaptation_time + trained.seconds + laps.total,
        start.record.timings | trained.timings | laps.timings,
        selected_steps=trained.selected_steps,
    )
    return StageResult(candidate, record, v, trained.curve)


def refine(
    backup: SlotPolicy,
    start: StageResult,
    settings: AdaptationSettings | None = None,
    perturb: Callable[[SlotPolicy], None] | None = None,
    on_progress: Callable[[str, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> StageResult:
    """The second stage: `train_candidate`, then `judge`."""
    progress = on_progress or (lambda stage, fraction: None)
    trained = train_candidate(
        backup, start.record, start.candidate.nodes, settings, progress, should_stop
    )
    progress("validate", 0.8)
    result = judge(backup, start, trained, settings, perturb)
    progress("done", 1.0)
    return result


@dataclass
class AdaptationResult:
    """Both stages of one adaptation; the attributes of the final one are at the top level."""

    zero_shot: StageResult
    final: StageResult  # the fine-tuned candidate, or the zero-shot one without a budget

    @property
    def record(self) -> AdaptationRecord:
        return self.final.record

    @property
    def candidate(self) -> SlotPolicy:
        return self.final.candidate

    @property
    def serving(self) -> SlotPolicy | None:
        """The candidate that ends up active, or None when the backup keeps serving."""
        if self.final.promoted:
            return self.final.candidate
        return self.zero_shot.candidate if self.zero_shot.promoted else None

    @property
    def curve(self) -> list[tuple[int, float, float]]:
        return self.final.curve

    @property
    def promoted(self) -> bool:
        return self.serving is not None

    def __getattr__(self, name: str):
        """outcome, reason, performance_retention, ..., timings: the final record's."""
        if name.startswith("_") or name in ("zero_shot", "final"):
            raise AttributeError(name)
        return getattr(self.final.record, name)


def adapt(
    backup: SlotPolicy,
    new_nodes: Sequence[NodeProfile],
    settings: AdaptationSettings | None = None,
    perturb: Callable[[SlotPolicy], None] | None = None,
    on_progress: Callable[[str, float], None] | None = None,
    on_zero_shot: Callable[[StageResult], None] | None = None,
) -> AdaptationResult:
    """Both stages: validate the zero-shot candidate (`on_zero_shot` may serve it before the
    fine-tune starts), then fine-tune and decide again. With `budget_steps=0` the zero-shot
    decision is final.

    `perturb` is applied to each candidate before its validation: a rollback drill (and a test
    hook) proving that a bad candidate is caught.
    """
    s = settings or AdaptationSettings()
    progress = on_progress or (lambda stage, fraction: None)
    progress("resize", 0.0)
    first = zero_shot(backup, new_nodes, s, perturb)
    if on_zero_shot is not None:
        on_zero_shot(first)
    if s.budget_steps <= 0 and first.record.strategy != "knowledge_distillation":
        progress("done", 1.0)
        return AdaptationResult(first, first)
    return AdaptationResult(first, refine(backup, first, s, perturb, progress))
