"""Start training from the best heuristic on the workload, not from the myopic rule.

A fresh policy's argmax is the myopic heuristic (`policy.COST_PRIOR`). On the synthetic
workload PPO climbs from there past every heuristic; on a replayed real trace it did not move
at all in 300k steps (S stayed 0.775, the myopic rule's score), because the best heuristic there
packs nodes (MostAllocated), the opposite of what the cost prior favours, and the policy never
explored far enough to find it. Imitating the best heuristic first (behaviour cloning on states
visited by a mix of teacher and student, DAgger-style) puts PPO where the heuristics end, so
what it learns is where to deviate from them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from metapolicy.baselines import HEURISTICS, make_random
from metapolicy.cluster import NodeProfile
from metapolicy.evaluation import episode_returns
from metapolicy.policy import SlotPolicy
from metapolicy.selection import selection_seeds
from metapolicy.sim import PlacementSim
from metapolicy.subclusters import SubClusters
from metapolicy.traces import Workload


@dataclass(frozen=True)
class ImitationSettings:
    teacher: str = "best"  # a baselines.HEURISTICS name, or the best on the selection episodes
    # Alibaba replay, teacher best_fit, S after PPO on seeds 0-2: 0.978, 0.980, 0.974 with 32k
    # placements and 8 epochs; 0.973, 0.988, 1.003 with these (about 25 s more). The closer
    # copy is safe only behind the filter (`Observation.choices`): without it a zero-padded
    # node, once full, outscored the nodes a pod fits (docs/workloads.md).
    steps: int = 65_536  # placements collected
    envs: int = 16
    mix: float = 0.5  # share of placements made by the teacher while collecting
    epochs: int = 16
    batch: int = 256
    learning_rate: float = 1e-3
    # Soft targets keep the student from becoming near-deterministic, which left PPO nothing
    # to explore from (Alibaba replay, teacher most_allocated, S after PPO: 1.017 with hard
    # targets, 1.028 with 0.2). With best_fit, the better teacher there: seeds 0 and 1 after
    # PPO 1.004 and 0.988 soft, 0.992 and 0.975 hard (both before the filter).
    label_smoothing: float = 0.2
    seed: int = 0

    def for_sub_clusters(self) -> ImitationSettings:
        """Half the placements and epochs where training plays sub-clusters (big clusters):
        at N = 1000 (synthetic workload) the full budget took 100 s of a 236 s training
        instead of 26 s, and the policy ended lower (S 1.120 against 1.188, one seed)."""
        return replace(self, steps=self.steps // 2, epochs=self.epochs // 2)

    def within(self, budget: int) -> ImitationSettings:
        """No more placements than the training's own step budget: imitation is the warm
        start of a training, not a fixed cost on top of it. A quick one (`--steps 1024`, 3
        nodes) spent 20 s of its 21 s imitating 64k placements."""
        return replace(self, steps=min(self.steps, max(budget, self.envs)))


@dataclass(frozen=True)
class ImitationResult:
    teacher: str
    loss: float  # cross-entropy to the teacher's choices, last epoch
    seconds: float


def best_heuristic(
    nodes: Sequence[NodeProfile], workload: Workload | None, episodes: int = 16
) -> str:
    """The heuristic with the best mean return on the selection episodes (never the
    validation ones, so the choice does not flatter the reported score)."""
    seeds = selection_seeds(episodes)
    returns = {
        name: episode_returns(agent, nodes, workload, seeds).mean()
        for name, agent in HEURISTICS.items()
    }
    return max(returns, key=returns.get)


def imitate(
    policy: SlotPolicy,
    nodes: Sequence[NodeProfile],
    workload: Workload | None,
    settings: ImitationSettings | None = None,
) -> ImitationResult:
    """Train `policy` in place to choose what the teacher heuristic chooses."""
    s = settings or ImitationSettings()
    start = time.perf_counter()
    teacher = best_heuristic(nodes, workload) if s.teacher == "best" else s.teacher
    if teacher not in HEURISTICS:
        raise ValueError(f"unknown teacher {teacher!r}; choose from best, {', '.join(HEURISTICS)}")
    agent = HEURISTICS[teacher]
    sim = PlacementSim(nodes, workload, batch=s.envs)
    names = sim.names
    index, present = policy._slot_index(names)
    slot_of_env = np.full(len(names), -1)
    slot_of_env[index[present]] = np.flatnonzero(present)
    rng = np.random.default_rng(s.seed)
    generator = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(s.seed)

    def seeds(episode: int) -> list[int]:
        return [(s.seed * 7_919 + 5 + episode) * s.envs + i for i in range(s.envs)]

    episode = 0
    obs = sim.reset(seeds(episode))
    views, targets = [], []
    rows = np.arange(s.envs)
    for _ in range(max(1, s.steps // s.envs)):
        label = np.asarray(agent(sim, obs))
        view = policy.inputs(obs, names)  # slot order; on a sub-cluster its own, plus slot ids
        if obs.members is None:
            column = slot_of_env[label]
        else:
            column = np.where(view[3].numpy()[rows, label] >= 0, label, -1)
        known = column >= 0
        views.append(tuple(t[known] for t in view))
        targets.append(torch.from_numpy(column[known]))
        own = policy.act(obs, names, deterministic=False, generator=generator)
        actions = np.where(rng.random(s.envs) < s.mix, label, own)
        obs, _, done, _ = sim.step(actions)
        if done:
            episode += 1
            obs = sim.reset(seeds(episode))
    device = policy.device
    inputs = [torch.cat([v[k] for v in views]).to(device) for k in range(len(views[0]))]
    target = torch.cat(targets).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=s.learning_rate)
    loss_value = float("nan")
    for _ in range(s.epochs):
        order = torch.randperm(len(target), generator=generator).to(device)
        total, batches = 0.0, 0
        for first in range(0, len(order), s.batch):
            pick = order[first : first + s.batch]
            logits = policy.action_logits(*(x[pick] for x in inputs))
            # torch's label smoothing also aims at masked nodes (logit -1e9), a share that
            # cannot be reached and pulls every allowed logit down alike, so its value means
            # nothing once the filter masks a node; the loss reported is the plain
            # cross-entropy. Smoothing over the allowed nodes only, a proper loss, trained
            # worse on the trace (seeds 1 and 2 after PPO: 0.961 and 0.935 against 0.988
            # and 1.003 with this one).
            loss = torch.nn.functional.cross_entropy(
                logits, target[pick], label_smoothing=s.label_smoothing
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            plain = torch.nn.functional.cross_entropy(logits.detach(), target[pick])
            total, batches = total + plain.item(), batches + 1
        loss_value = total / max(batches, 1)
    return ImitationResult(teacher, loss_value, time.perf_counter() - start)


def untrained_gap(
    policy: SlotPolicy,
    nodes: Sequence[NodeProfile],
    workload: Workload | None,
    episodes: int = 16,
) -> tuple[float, str]:
    """(S of `policy` as it is, the best heuristic) on the selection episodes."""
    seeds = selection_seeds(episodes)
    random = episode_returns(make_random(seeds[0]), nodes, workload, seeds).mean()
    returns = {
        name: episode_returns(agent, nodes, workload, seeds).mean()
        for name, agent in HEURISTICS.items()
    }
    best = max(returns, key=returns.get)
    own = episode_returns(policy.agent(), nodes, workload, seeds).mean()
    return float((own - random) / max(returns[best] - random, 1e-9)), best


def warm_start(
    policy: SlotPolicy,
    nodes: Sequence[NodeProfile],
    workload: Workload | None,
    below: float,
    seed: int = 0,
    budget: int | None = None,
) -> str | None:
    """Imitate the best heuristic if the fresh policy (the myopic rule) scores below `below`
    on the selection episodes; returns the teacher, or None if the policy starts as it is.
    `budget`, the training's PPO steps, caps the placements imitated.

    Only when the myopic start is far off: where it is close (S 0.97 on the synthetic
    workload) PPO from it beats every heuristic (S 1.06), while PPO from an imitated,
    near-deterministic start barely moved (S 1.00): imitation is a rescue, not a default."""
    if below <= 0:
        return None
    score, best = untrained_gap(policy, nodes, workload)
    if score >= below:
        return None
    settings = ImitationSettings(teacher=best, seed=seed)
    if isinstance(nodes, SubClusters):
        settings = settings.for_sub_clusters()
    if budget is not None:
        settings = settings.within(budget)
    imitate(policy, nodes, workload, settings)
    return best
