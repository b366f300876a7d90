"""Initial training: a fresh policy for a cluster, scored against the heuristics it must beat."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from metapolicy.cluster import NodeProfile, check_node_set
from metapolicy.evaluation import episode_returns, evaluation_seeds, reference
from metapolicy.policy import SlotPolicy, make_policy
from metapolicy.ppo import PPOSettings, TrainStats, train
from metapolicy.workload import WorkloadSpec


@dataclass(frozen=True)
class TrainingSettings:
    architecture: str = "node-set"
    hidden: int = 64
    steps: int = 300_000
    seed: int = 0
    episodes: int = 16  # evaluation episodes for the reported score
    max_nodes: int = 20
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)


@dataclass
class TrainingResult:
    policy: SlotPolicy
    score: float  # normalised S on the training cluster (> 1: beats every heuristic)
    best_heuristic: str
    seconds: float
    steps: int


def train_initial(
    nodes: Sequence[NodeProfile],
    settings: TrainingSettings | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> TrainingResult:
    s = settings or TrainingSettings()
    nodes = check_node_set(nodes, s.max_nodes)
    policy = make_policy(s.architecture, nodes, s.hidden, s.seed)

    def report(stats: TrainStats) -> None:
        if on_progress is not None:
            on_progress(min(1.0, stats.steps / s.steps))

    stats = train(policy, nodes, s.workload, PPOSettings(steps=s.steps, seed=s.seed), report)
    seeds = evaluation_seeds(s.episodes)
    ref = reference(nodes, s.workload, seeds)
    score = ref.score(episode_returns(policy.agent(), nodes, s.workload, seeds))
    return TrainingResult(policy, score, ref.best, stats.seconds, stats.steps)
