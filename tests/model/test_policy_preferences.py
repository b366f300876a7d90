"""`SlotPolicy.preferences`: the server's way to score the nodes a scheduler offers, including
nodes that joined after the last adaptation."""

import numpy as np
import torch

from metapolicy.cluster import make_cluster
from metapolicy.policy import MASKED_LOGIT, make_policy
from metapolicy.sim import PlacementSim
from metapolicy.strategies import resize


def test_preferences_equal_the_forward_pass_in_env_order(scrambled, workload):
    shuffled = list(reversed(scrambled.nodes))
    sim = PlacementSim(shuffled, workload, batch=4)
    obs = sim.reset(5)
    logits, _ = scrambled(*scrambled.view(obs, sim.names))  # slot order
    slot_of = {name: j for j, name in enumerate(scrambled.slot_names)}
    expected = logits.detach().numpy()[:, [slot_of[name] for name in sim.names]]
    np.testing.assert_allclose(scrambled.preferences(obs, sim.names), expected, rtol=1e-5)
    assert scrambled.scorable(sim.names).all()


def test_preferences_respect_the_observation_mask(scrambled, workload):
    sim = PlacementSim(scrambled.nodes, workload, batch=2)
    obs = sim.reset(1)
    obs.mask[:, 2] = False
    prefs = scrambled.preferences(obs, sim.names)
    assert (prefs[:, 2] == MASKED_LOGIT).all()
    assert (prefs[:, [0, 1, 3]] > MASKED_LOGIT).all()


def test_node_set_scores_a_node_without_a_slot_like_a_zero_padded_slot(workload):
    """A new node gets a zero slot embedding: exactly what zero padding would give it."""
    nodes = make_cluster(6, seed=3)
    policy = make_policy("node-set", nodes, hidden=16, seed=0)
    with torch.no_grad():
        policy.slot_table.add_(torch.randn(policy.slot_table.shape) * 0.5)  # not all zero
    joined = make_cluster(8, seed=3)[6:]
    padded = resize(policy, nodes + joined, "zero_padding")
    sim = PlacementSim(nodes + joined, workload, batch=4)
    obs = sim.reset(3)
    prefs = policy.preferences(obs, sim.names)
    assert policy.scorable(sim.names).all()
    assert (prefs[:, 6:] > MASKED_LOGIT).all()
    np.testing.assert_allclose(prefs, padded.preferences(obs, sim.names), rtol=1e-5, atol=1e-5)


def test_slot_mlp_cannot_score_a_node_without_a_slot(workload):
    nodes = make_cluster(6, seed=3)
    policy = make_policy("slot-mlp", nodes, hidden=16, seed=0)
    joined = make_cluster(8, seed=3)[6:]
    sim = PlacementSim(nodes + joined, workload, batch=2)
    obs = sim.reset(4)
    assert policy.scorable(sim.names).tolist() == [True] * 6 + [False] * 2
    prefs = policy.preferences(obs, sim.names)
    assert (prefs[:, 6:] == MASKED_LOGIT).all()
    masked_mode, _ = policy(*policy.view(obs, sim.names))  # the known nodes as before
    np.testing.assert_allclose(prefs[:, :6], masked_mode.detach().numpy(), rtol=1e-5)


def test_preferences_cache_nothing_per_node_list(policy, workload):
    """Every scheduling request brings its own candidate list: no per-list cache may grow."""
    sim = PlacementSim(policy.nodes, workload, batch=1)
    obs = sim.reset(0)
    for k in range(2, 6):
        names = sim.names[:k]
        sub = type(obs)(obs.nodes[:, :k], obs.task, obs.mask[:, :k])
        policy.preferences(sub, names)
    assert policy._views == {}
