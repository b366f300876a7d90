"""Initial training: a fresh policy for a cluster, scored against the heuristics it must beat."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from metapolicy import replays
from metapolicy.cluster import NodeProfile, check_node_set
from metapolicy.compact import snap
from metapolicy.device import resolve_device
from metapolicy.evaluation import evaluation_seeds, reference_stats
from metapolicy.imitation import warm_start
from metapolicy.policy import SlotPolicy, check_capacity, make_policy
from metapolicy.ppo import PPOSettings
from metapolicy.record import AdaptationRecord, Outcome, Reason
from metapolicy.replays import REPLAYS
from metapolicy.selection import train_keeping_best
from metapolicy.subclusters import DEFAULT_SIZE, sampled
from metapolicy.traces import Workload
from metapolicy.workload import WorkloadSpec

# Measured at 8 nodes, hidden 64, seeds 0-2, S on 64 episodes: node-set 1.092/1.058/1.057 at
# 300k steps (about 50 s). slot-mlp underfits there, 1.053/0.973/1.017, and reaches
# 1.065/1.075/1.049 at 1M steps in about the same time (its steps are about 3x cheaper).
DEFAULT_STEPS = {"node-set": 300_000, "slot-mlp": 1_000_000}


@dataclass(frozen=True)
class TrainingSettings:
    architecture: str = "node-set"
    hidden: int = 64
    steps: int | None = None  # None: DEFAULT_STEPS for the architecture
    seed: int = 0
    episodes: int = 16  # evaluation episodes for the reported score
    select_episodes: int = 16  # 0: keep the last weights instead of the best scored
    select_every: int = 8  # updates between two scorings of the weights
    max_nodes: int = 20
    workload: Workload = field(default_factory=WorkloadSpec)
    # Nodes per episode on a bigger cluster (node-set only; 0: always the whole cluster).
    subcluster: int = DEFAULT_SIZE
    device: str = "auto"  # metapolicy.device: where the policy trains
    # Warm start from the best heuristic when the fresh policy (the myopic rule) scores below
    # this S on the selection episodes (0: never); see metapolicy.imitation.
    imitate_below: float = 0.9

    def __post_init__(self) -> None:
        if self.steps is None:
            default = DEFAULT_STEPS.get(self.architecture, DEFAULT_STEPS["node-set"])
            object.__setattr__(self, "steps", default)


@dataclass
class TrainingResult:
    policy: SlotPolicy
    score: float  # normalised S on the training cluster (> 1: beats every heuristic)
    best_heuristic: str
    seconds: float
    steps: int
    # (steps, training seconds, mean return on the selection seeds); empty without selection
    curve: list[tuple[int, float, float]] = field(default_factory=list, repr=False)
    teacher: str | None = None  # the heuristic imitated before PPO, if any
    warm_start_seconds: float = 0.0  # of `seconds`: deciding on and running the imitation

    def record(self) -> AdaptationRecord:
        return AdaptationRecord(
            outcome=Outcome.PROMOTED,
            reason=f"initial training: S={self.score:.3f}, best heuristic {self.best_heuristic}",
            reason_codes=(Reason.INITIAL_TRAINING,),
            strategy="initial",
            new_nodes=self.policy.size,
            adaptation_time=self.seconds,
            candidate_score=self.score,
            best_heuristic=self.best_heuristic,
            steps=self.steps,
        )


def train_initial(
    nodes: Sequence[NodeProfile],
    settings: TrainingSettings | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> TrainingResult:
    """A fresh policy trained on `nodes` (on sub-clusters of them when there are more than
    `settings.subcluster`), scored on the validation episodes."""
    s = settings or TrainingSettings()
    nodes = check_node_set(nodes, s.max_nodes)
    check_capacity(s.architecture, len(nodes))
    device = resolve_device(s.device, "training.device")
    policy = make_policy(s.architecture, nodes, s.hidden, s.seed).to(device)
    view = sampled(nodes, s.subcluster if policy.scores_subsets else None, s.seed)
    started = time.perf_counter()
    teacher = warm_start(policy, view, s.workload, s.imitate_below, s.seed, s.steps)
    warm_seconds = time.perf_counter() - started

    stats, best = train_keeping_best(
        policy,
        view,
        s.workload,
        PPOSettings(steps=s.steps, seed=s.seed),
        s.select_episodes,
        s.select_every,
        None if on_progress is None else lambda st: on_progress(min(1.0, st.steps / s.steps)),
    )
    snap(policy.cpu())  # evaluated as it will be stored
    seeds = evaluation_seeds(s.episodes)
    ref, played = reference_stats(view, s.workload, seeds, {"policy": policy.agent()})
    score = ref.score(played["policy"].returns)
    # the first adaptation's validation replays this instead of playing it again
    size = s.subcluster if policy.scores_subsets else None
    REPLAYS.put(replays.key(policy, nodes, s.workload, seeds, size), played["policy"].returns, ref)
    curve = [] if best is None else best.curve
    seconds = stats.seconds + warm_seconds
    return TrainingResult(
        policy, score, ref.best, seconds, stats.steps, curve, teacher, warm_seconds
    )
