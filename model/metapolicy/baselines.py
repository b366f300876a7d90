"""Heuristic placement baselines. A learned policy is only worth serving if it beats all of them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from metapolicy.sim import Observation, PlacementSim

Agent = Callable[[PlacementSim, Observation], np.ndarray]


def _argmin_where(score: np.ndarray, allowed: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Lowest score among allowed nodes; rows with none allowed use the fallback set."""
    use = np.where(allowed.any(-1, keepdims=True), allowed, fallback)
    return np.argmin(np.where(use, score, np.inf), axis=-1)


def make_random(seed: int = 0) -> Agent:
    """Uniform over available nodes: the floor of the normalised score."""
    rng = np.random.default_rng(seed)

    def act(sim: PlacementSim, obs: Observation) -> np.ndarray:
        noise = rng.random(obs.mask.shape)
        return np.argmax(np.where(obs.mask, noise, -1.0), axis=-1)

    return act


def greedy(sim: PlacementSim, obs: Observation) -> np.ndarray:
    """The closest node that still has room."""
    _, fits, _ = sim.placement()
    latency = np.broadcast_to(sim.latency, fits.shape)
    return _argmin_where(latency, fits & obs.mask, obs.mask)


def least_loaded(sim: PlacementSim, obs: Observation) -> np.ndarray:
    """The node with the lowest CPU utilisation after placement, among those with room."""
    _, fits, cpu_after = sim.placement()
    return _argmin_where(cpu_after, fits & obs.mask, obs.mask)


def myopic(sim: PlacementSim, obs: Observation) -> np.ndarray:
    """The node with the lowest immediate cost of this placement, congestion included."""
    cost, _, _ = sim.placement()
    return _argmin_where(cost, obs.mask, obs.mask)


HEURISTICS: dict[str, Agent] = {"greedy": greedy, "least_loaded": least_loaded, "myopic": myopic}
