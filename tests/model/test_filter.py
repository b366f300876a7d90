"""The filter: like kube-scheduler, which hands an extender only the nodes a pod fits, a
placement chooses among those while any exists (`Observation.choices`)."""

from __future__ import annotations

import numpy as np
import torch

from metapolicy.env import PlacementEnv
from metapolicy.policy import MASKED_LOGIT
from metapolicy.sim import PlacementSim


def _with_node_full(sim: PlacementSim, node: int):
    """The current observation after `node` has been filled to its allocatable cpu."""
    sim.used_cpu[:, node] = sim.cpu[node]
    sim._placement = None
    return sim._observe()


def test_a_policy_that_prefers_expensive_nodes_still_only_picks_nodes_the_pod_fits(
    policy, workload
):
    sim = PlacementSim(policy.nodes, workload, batch=8)
    sim.reset(0)
    obs = _with_node_full(sim, 0)
    cost, fits, _ = sim.placement()
    assert not fits[:, 0].any() and fits[:, 1:].any(-1).all()
    assert (cost.argmax(-1) == 0).all()  # unfiltered, the costliest node is the full one
    with torch.no_grad():
        policy.cost_weight.fill_(100.0)  # as `rollback_drill`: prefer the most expensive node
    assert not np.array_equal(obs.choices, obs.mask)
    for deterministic in (True, False):
        actions = policy.act(obs, sim.names, deterministic=deterministic)
        assert fits[np.arange(8), actions].all(), actions
    logits = policy.preferences(obs, sim.names)
    assert (logits[:, 0] == MASKED_LOGIT).all() and (logits[:, 1:] > MASKED_LOGIT).all()


def test_a_pod_that_fits_nowhere_may_go_to_any_available_node(policy, workload):
    sim = PlacementSim(policy.nodes, workload, batch=4)
    sim.reset(0)
    for node in range(sim.size):
        obs = _with_node_full(sim, node)
    assert np.array_equal(obs.choices, obs.mask) and obs.mask.all()
    actions = policy.act(obs, sim.names)
    _, _, _, cost = sim.step(actions)
    assert (cost >= 50.0).all()  # rejected wherever it went


def test_the_environment_offers_only_nodes_the_task_fits(nodes, workload):
    env = PlacementEnv(nodes, workload)
    obs, _ = env.reset(seed=0)
    narrowed = 0
    for _ in range(400):
        fits = env.sim.placement()[1][0]
        offered = obs["action_mask"].astype(bool)
        assert np.array_equal(offered, fits if fits.any() else np.ones_like(fits))
        narrowed += not offered.all()
        obs, _, terminated, _, _ = env.step(int(np.flatnonzero(offered)[0]))
        if terminated:
            break
    assert narrowed > 0  # the episode filled some node: the filter had something to do
