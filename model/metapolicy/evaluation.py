"""Paired evaluation, normalised score and measured retention.

Every agent is run on the same episode seeds (common random numbers), so differences between
agents are not noise in the task stream. The normalised score puts a policy between uniform
random (0) and the best heuristic on that cluster (1); above 1 it beats every heuristic.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import astuple, dataclass

import numpy as np

from metapolicy.baselines import HEURISTICS, Agent, make_random
from metapolicy.cluster import NodeProfile
from metapolicy.features import Observation
from metapolicy.sim import PlacementSim
from metapolicy.traces import VALIDATION_SEED_BASE, Workload


@dataclass(frozen=True)
class EpisodeStats:
    """Per-episode results of one agent: S hides how big a difference is, these say it."""

    returns: np.ndarray  # (E,) undiscounted return
    cost_ms: np.ndarray  # (E,) mean placement cost per task, rejections included
    reject_rate: np.ndarray  # (E,) share of tasks rejected (fitting no node, but for random)

    def summary(self) -> dict[str, float]:
        return {
            "cost_ms": float(self.cost_ms.mean()),
            "reject_rate": float(self.reject_rate.mean()),
        }


def episode_stats(
    agent: Agent,
    nodes: Sequence[NodeProfile],
    workload: Workload | None,
    seeds: Sequence[int],
) -> EpisodeStats:
    """One episode per seed, all stepped as one batch: returns, cost per task, rejections."""
    return _played(agent, PlacementSim(nodes, workload, batch=len(seeds)), list(seeds))


def episode_stats_together(
    agents: Mapping[str, Agent],
    nodes: Sequence[NodeProfile],
    workload: Workload | None,
    seeds: Sequence[int],
    whole: Collection[str] = (),
) -> dict[str, EpisodeStats]:
    """`episode_stats` of several agents in one simulator batch: each agent plays E
    consecutive rows, on the same E seeds. The simulator and the observation work row by row, so
    every episode plays exactly as in a batch of its own, and one batch costs far fewer numpy
    calls than one per agent.

    Agents named in `whole` read the simulator, which holds every row (the heuristics): they
    answer for the whole batch and their rows are taken. The others (policies, `make_random`)
    are shown only their rows of each observation, so they draw and compute exactly as alone.
    They play the first rows, and the observation covers only those: the heuristics' rows need
    none, and building it is most of the cost of a step."""
    names = sorted(agents, key=lambda name: name in whole)  # the observation's readers first
    count = len(seeds)
    readers = sum(name not in whole for name in names)

    def act(sim: PlacementSim, obs: Observation) -> np.ndarray:
        chosen = []
        for i, name in enumerate(names):
            rows = slice(i * count, (i + 1) * count)
            if name in whole:
                chosen.append(np.asarray(agents[name](sim, obs), np.int64)[rows])
            else:
                chosen.append(np.asarray(agents[name](sim, _rows(obs, rows)), np.int64))
        return np.concatenate(chosen)

    sim = PlacementSim(
        nodes, workload, batch=count * len(names), observation_rows=readers * count or None
    )
    stats = _played(act, sim, list(seeds) * len(names))
    played = {
        name: EpisodeStats(*(a[i * count : (i + 1) * count] for a in astuple(stats)))
        for i, name in enumerate(names)
    }
    return {name: played[name] for name in agents}


def _rows(obs: Observation, rows: slice) -> Observation:
    members = None if obs.members is None else obs.members[rows]
    return Observation(obs.nodes[rows], obs.task[rows], obs.mask[rows], members)


def _played(agent: Agent, sim: PlacementSim, seeds: list[int]) -> EpisodeStats:
    obs = sim.reset(seeds)
    rows = np.arange(len(seeds))
    total, cost_sum, rejected = np.zeros(len(seeds)), np.zeros(len(seeds)), np.zeros(len(seeds))
    done = False
    while not done:
        actions = np.asarray(agent(sim, obs), np.int64)
        _, fits, _ = sim.placement()
        rejected += ~(fits[rows, actions] & sim.allowed(actions))
        obs, reward, done, cost = sim.step(actions)
        total += reward
        cost_sum += cost
    tasks = sim.episode_tasks
    return EpisodeStats(returns=total, cost_ms=cost_sum / tasks, reject_rate=rejected / tasks)


def episode_returns(
    agent: Agent,
    nodes: Sequence[NodeProfile],
    workload: Workload | None,
    seeds: Sequence[int],
) -> np.ndarray:
    """Undiscounted return of one episode per seed, all episodes stepped as one batch."""
    return episode_stats(agent, nodes, workload, seeds).returns


@dataclass(frozen=True)
class Reference:
    """Random and heuristic returns on one cluster: the scale of the normalised score."""

    random: np.ndarray
    heuristics: Mapping[str, np.ndarray]

    @property
    def best(self) -> str:
        return max(self.heuristics, key=lambda name: self.heuristics[name].mean())

    def score(self, returns: np.ndarray, index: np.ndarray | None = None) -> float:
        """S = (R - R_random) / (R_best - R_random) on mean returns (over `index` if given)."""
        pick = slice(None) if index is None else index
        low = self.random[pick].mean()
        high = max(r[pick].mean() for r in self.heuristics.values())
        return float((returns[pick].mean() - low) / max(high - low, 1e-9))

    def resampled_scores(self, returns: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """`score` over each row of `draws` (resampled seed indices, one resample per row), in
        one numpy call per agent instead of one per resample: a bootstrap's 1,000 resamples
        took a tenth of a second in every validation."""
        low = self.random[draws].mean(-1)
        high = np.max([r[draws].mean(-1) for r in self.heuristics.values()], axis=0)
        return (returns[draws].mean(-1) - low) / np.maximum(high - low, 1e-9)


def reference(
    nodes: Sequence[NodeProfile], workload: Workload | None, seeds: Sequence[int]
) -> Reference:
    return reference_stats(nodes, workload, seeds)[0]


def reference_stats(
    nodes: Sequence[NodeProfile],
    workload: Workload | None,
    seeds: Sequence[int],
    agents: Mapping[str, Agent] | None = None,
) -> tuple[Reference, dict[str, EpisodeStats]]:
    """The reference and every heuristic's (and random's) full episode stats, all played in
    one batch, together with `agents` if given (their stats under their own names)."""
    extra = dict(agents or {})
    if clash := set(extra) & {"random", *HEURISTICS}:
        raise ValueError(f"agent names {sorted(clash)} are taken by the reference")
    everyone = {**extra, "random": make_random(seeds[0]), **HEURISTICS}
    stats = episode_stats_together(everyone, nodes, workload, seeds, whole=HEURISTICS)
    ref = Reference(
        random=stats["random"].returns,
        heuristics={name: stats[name].returns for name in HEURISTICS},
    )
    return ref, stats


@dataclass(frozen=True)
class Retention:
    value: float
    low: float  # bootstrap confidence interval
    high: float


def retention(
    candidate_new: np.ndarray,
    reference_new: Reference,
    backup_old: np.ndarray,
    reference_old: Reference,
    samples: int = 1000,
    confidence: float = 0.9,
    seed: int = 0,
) -> Retention:
    """S(candidate, new cluster) / S(backup, old cluster) with a paired bootstrap over seeds.

    Both evaluations use the same seed list, so a resample draws the same seeds for both.
    """
    point = reference_new.score(candidate_new) / max(reference_old.score(backup_old), 1e-9)
    n = len(candidate_new)
    draws = np.random.default_rng(seed).integers(0, n, (samples, n))
    ratios = reference_new.resampled_scores(candidate_new, draws) / np.maximum(
        reference_old.resampled_scores(backup_old, draws), 1e-9
    )
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return Retention(point, float(low), float(high))


def evaluation_seeds(episodes: int, base: int = VALIDATION_SEED_BASE) -> list[int]:
    """Fixed evaluation seeds, disjoint from training seeds (which are small integers); a trace
    replays them on its validation windows only (`traces.is_validation_seed`)."""
    return [base + i for i in range(episodes)]
