"""Keep the best weights seen during training, judged on episodes of their own.

PPO's last iterate is not its best one: a late noisy update can undo part of what the policy
knew, and on a short fine-tune nothing repairs it (in session-1 measurements one initial
training ended below where it had been mid-run, and one −2-node adaptation lost 9% of its
zero-shot skill). Scoring the weights every few updates, the starting point included, and
keeping the best means training can only help on these episodes. The selection seeds are
disjoint from the validation seeds, so the promote/rollback decision still sees fresh episodes
and is not flattered by the pick.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import numpy as np

from metapolicy.cluster import NodeProfile
from metapolicy.evaluation import episode_returns, evaluation_seeds
from metapolicy.policy import SlotPolicy
from metapolicy.ppo import PPOSettings, TrainStats, train
from metapolicy.traces import SELECTION_SEED_BASE, Workload

# Validation uses 10_000 + i and training episodes small integers; a trace replays selection
# seeds on its training windows, never on the validation ones (traces.TraceTasks).


def selection_seeds(episodes: int) -> list[int]:
    return evaluation_seeds(episodes, base=SELECTION_SEED_BASE)


class BestWeights:
    """An `on_update` hook for `ppo.train` that snapshots the best-scoring weights.

    Call `restore()` after training to load them back into the policy.
    """

    def __init__(
        self,
        policy: SlotPolicy,
        nodes: Sequence[NodeProfile],
        workload: Workload | None,
        episodes: int = 16,
        every: int = 2,
    ) -> None:
        # kept as given: `SubClusters` (a big cluster) must stay sub-clusters
        self.policy, self.nodes, self.workload = policy, nodes, workload
        self.seeds = selection_seeds(episodes)
        self.every = every
        self.best_return = -np.inf
        self.best_steps = 0
        self.seconds = 0.0  # time spent scoring, reported apart from training
        # (environment steps, training seconds, mean selection return): the learning curve
        self.curve: list[tuple[int, float, float]] = []
        self._started = time.perf_counter()
        self._state: dict | None = None
        self.consider(TrainStats())

    def __call__(self, stats: TrainStats) -> None:
        if stats.updates % self.every == 0:
            self.consider(stats)

    def consider(self, stats: TrainStats) -> None:
        start = time.perf_counter()
        returns = episode_returns(self.policy.agent(), self.nodes, self.workload, self.seeds)
        mean = float(returns.mean())
        self.curve.append((stats.steps, start - self._started - self.seconds, mean))
        if mean > self.best_return:
            self.best_return, self.best_steps = mean, stats.steps
            self._state = copy.deepcopy(self.policy.state_dict())
        self.seconds += time.perf_counter() - start

    def restore(self, final: TrainStats) -> int:
        """Score the final weights too, load the best; returns the step count they came from."""
        if final.updates % self.every:
            self.consider(final)
        self.policy.load_state_dict(self._state)
        return self.best_steps


def train_keeping_best(
    policy: SlotPolicy,
    nodes: Sequence[NodeProfile],
    workload: Workload | None,
    settings: PPOSettings,
    episodes: int,
    every: int,
    on_update: Callable[[TrainStats], None] | None = None,
) -> tuple[TrainStats, BestWeights | None]:
    """`ppo.train`, then the best weights seen loaded back; `episodes=0` keeps the last ones."""
    best = BestWeights(policy, nodes, workload, episodes, every) if episodes else None

    def hook(stats: TrainStats) -> None:
        if best is not None:
            best(stats)
        if on_update is not None:
            on_update(stats)

    stats = train(policy, nodes, workload, settings, hook)
    if best is not None:
        best.restore(stats)
    return stats, best
