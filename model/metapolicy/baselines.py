"""Heuristic placement baselines. A learned policy is only worth serving if it beats all of them,
kube-scheduler's own default scoring (`kube_default`) first: that is what a cluster does
without us.

The heuristics read the simulator, never the observation (`PlacementSim.choices` is the
filter), so evaluating against them builds observations only for the agents that read them
(`evaluation.episode_stats_together`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from metapolicy.features import Observation
from metapolicy.sim import PlacementSim

Agent = Callable[[PlacementSim, Observation], np.ndarray]


def _lowest(score: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The allowed node with the lowest score, per row. Heuristics allow `sim.choices()`, the
    nodes the pod fits (kube-scheduler's filter), or every available node when it fits none."""
    return np.argmin(np.where(allowed, score, np.inf), axis=-1)


def make_random(seed: int = 0) -> Agent:
    """Uniform over available nodes: the floor of the normalised score.

    Without the filter (`Observation.choices`): it is the scale's zero, not a competitor, and
    uniform over the nodes a pod fits beats every heuristic on some small clusters, which would
    leave the scale upside down there."""
    rng = np.random.default_rng(seed)

    def act(sim: PlacementSim, obs: Observation) -> np.ndarray:
        noise = rng.random(obs.mask.shape)
        return np.argmax(np.where(obs.mask, noise, -1.0), axis=-1)

    return act


def greedy(sim: PlacementSim, obs: Observation) -> np.ndarray:
    """The closest node that still has room."""
    choices = sim.choices()
    return _lowest(np.broadcast_to(sim.latency, choices.shape), choices)


def least_loaded(sim: PlacementSim, obs: Observation) -> np.ndarray:
    """The node with the lowest CPU utilisation after placement, among those with room."""
    _, _, cpu_after = sim.placement()
    return _lowest(cpu_after, sim.choices())


def myopic(sim: PlacementSim, obs: Observation) -> np.ndarray:
    """The node with the lowest immediate cost of this placement, congestion included. The
    only heuristic without the filter: a rejection is a cost like any other to it, so a tiny
    pod may be dropped rather than queued on a nearly full node."""
    cost, _, _ = sim.placement()
    return _lowest(cost, np.broadcast_to(sim.available, cost.shape))


# ----- kube-scheduler's own scoring ------------------------------------------------------------
MAX_NODE_SCORE = 100  # framework.MaxNodeScore


def least_allocated_scores(
    requested: tuple[np.ndarray, np.ndarray], allocatable: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """NodeResourcesFit, scoring strategy LeastAllocated, cpu and memory with weight 1 each
    (kubernetes pkg/scheduler/framework/plugins/noderesources/least_allocated.go):
    per resource `(allocatable - requested) * 100 / allocatable` (0 when over), integer
    division, then the weighted mean, again an integer. `requested` includes the pod."""
    per_resource = [
        np.where(req > alloc, 0, np.floor((alloc - req) * MAX_NODE_SCORE / alloc))
        for req, alloc in zip(requested, allocatable, strict=True)
    ]
    return np.floor(sum(per_resource) / len(per_resource))


def most_allocated_scores(
    requested: tuple[np.ndarray, np.ndarray], allocatable: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """NodeResourcesFit, scoring strategy MostAllocated (most_allocated.go): per resource
    `min(requested, allocatable) * 100 / allocatable`, integer division, weighted mean."""
    per_resource = [
        np.floor(np.minimum(req, alloc) * MAX_NODE_SCORE / alloc)
        for req, alloc in zip(requested, allocatable, strict=True)
    ]
    return np.floor(sum(per_resource) / len(per_resource))


def balanced_allocation_scores(
    requested: tuple[np.ndarray, np.ndarray], allocatable: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """NodeResourcesBalancedAllocation (balanced_allocation.go): with two resources the
    standard deviation of the requested fractions (each capped at 1) is |f_cpu - f_mem| / 2,
    and the score is `int((1 - std) * 100)`. `requested` includes the pod."""
    cpu, memory = (np.minimum(r / a, 1.0) for r, a in zip(requested, allocatable, strict=True))
    return np.floor((1 - np.abs(cpu - memory) / 2) * MAX_NODE_SCORE)


def kube_default_scores(
    requested: tuple[np.ndarray, np.ndarray], allocatable: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """The default profile's resource scores summed with their plugin weights (1 and 1):
    NodeResourcesFit (LeastAllocated) + NodeResourcesBalancedAllocation, 0..200. The default
    profile's other score plugins (affinity, taints, topology spread, image locality) score
    every node of a plain pod alike here."""
    return least_allocated_scores(requested, allocatable) + balanced_allocation_scores(
        requested, allocatable
    )


def _tie_noise(sim: PlacementSim) -> np.ndarray:
    """Below one score point, deterministic per (episode, step, node): kube-scheduler picks
    uniformly among the top-scored nodes (selectHost), and so do these heuristics, while an
    episode still replays identically."""
    seeds = np.asarray(sim.seeds, float)[:, None]
    nodes = np.arange(sim.size)[None, :]
    x = np.sin(seeds * 12.9898 + sim.step_index * 78.233 + nodes * 37.719) * 43758.5453
    return (x - np.floor(x)) * 0.5


def _after(sim: PlacementSim) -> tuple[tuple[np.ndarray, np.ndarray], tuple]:
    cpu, memory, _ = sim.current_task()
    requested = (sim.used_cpu + cpu[:, None], sim.used_memory + memory[:, None])
    return requested, (sim.cpu, sim.memory)


def kube_default(sim: PlacementSim, obs: Observation) -> np.ndarray:
    """kube-scheduler's default scoring among the nodes the pod fits (NodeResourcesFit's filter)."""
    score = kube_default_scores(*_after(sim)) + _tie_noise(sim)
    return _lowest(-score, sim.choices())


def most_allocated(sim: PlacementSim, obs: Observation) -> np.ndarray:
    """Bin packing: NodeResourcesFit with the MostAllocated strategy, among nodes that fit."""
    score = most_allocated_scores(*_after(sim)) + _tie_noise(sim)
    return _lowest(-score, sim.choices())


def best_fit(sim: PlacementSim, obs: Observation) -> np.ndarray:
    """Best Fit, the classic bin-packing rule: the node with the least room left after the pod,
    among nodes it fits. Room is absolute, cpu and memory each in units of the cluster's largest
    node, so a small pod goes to a small node that it fills rather than to a big one. Not a
    kube-scheduler strategy: MostAllocated ranks nodes by their filled share, which sends that
    pod to the big node, where it breaks up the room a big pod will need."""
    (requested_cpu, requested_memory), (cpu, memory) = _after(sim)
    room = (cpu - requested_cpu) / np.max(cpu, axis=-1, keepdims=True)
    room = room + (memory - requested_memory) / np.max(memory, axis=-1, keepdims=True)
    return _lowest(room + 1e-6 * _tie_noise(sim), sim.choices())


HEURISTICS: dict[str, Agent] = {
    "greedy": greedy,
    "least_loaded": least_loaded,
    "myopic": myopic,
    "kube_default": kube_default,
    "most_allocated": most_allocated,
    "best_fit": best_fit,
}
