import numpy as np
import pytest
import torch

from metapolicy.checkpoint import policy_from_checkpoint, policy_to_checkpoint
from metapolicy.cluster import make_cluster
from metapolicy.policy import make_policy
from metapolicy.sim import PlacementSim
from metapolicy.store import Checkpoint, CorruptCheckpointError


def test_act_never_picks_a_masked_or_unknown_node(policy, workload):
    """Env nodes the policy has no slot for are invisible; masked ones are never chosen."""
    extra = make_cluster(9, seed=3)[6:]  # three nodes the policy does not know
    sim = PlacementSim(policy.nodes + extra, workload, batch=32)
    obs = sim.reset(0)
    obs.mask[:, 1] = False
    for _ in range(5):
        actions = policy.act(obs, sim.names, deterministic=False)
        assert not np.isin(actions, [1, 6, 7, 8]).any()


def test_view_follows_slot_order_not_env_order(policy, workload):
    shuffled = list(reversed(policy.nodes))
    sim_a = PlacementSim(policy.nodes, workload, batch=4)
    sim_b = PlacementSim(shuffled, workload, batch=4)
    logits_a, _ = policy(*policy.view(sim_a.reset(2), sim_a.names))
    logits_b, _ = policy(*policy.view(sim_b.reset(2), sim_b.names))
    torch.testing.assert_close(logits_a, logits_b)


def test_action_logits_are_the_forward_logits_without_the_value(policy, workload):
    """Acting skips the value head; the logits must be exactly what training optimises."""
    sim = PlacementSim(policy.nodes, workload, batch=4)
    batch = policy.view(sim.reset(3), sim.names)
    logits, value = policy(*batch)
    assert value.shape == (4,)
    torch.testing.assert_close(policy.action_logits(*batch), logits, rtol=0, atol=0)
    if policy.scores_subsets:  # env-ordered nodes with their slot ids, one without a slot
        slots = torch.tensor([[2, 0, -1, 1]] * 4)
        nodes, task, mask = batch[0][:, :4], batch[1], batch[2][:, :4] & (slots >= 0)
        expected, _ = policy(nodes, task, mask, slots)
        torch.testing.assert_close(policy.action_logits(nodes, task, mask, slots), expected)


def test_checkpoint_round_trip_keeps_outputs_and_slot_names(policy, workload):
    restored = policy_from_checkpoint(policy_to_checkpoint(policy, strategy="initial"))
    assert restored.slot_names == policy.slot_names
    assert type(restored) is type(policy)
    sim = PlacementSim(policy.nodes, workload, batch=4)
    batch = policy.view(sim.reset(1), sim.names)
    torch.testing.assert_close(policy(*batch), restored(*batch))


def test_a_policy_trained_on_the_old_observation_is_refused(policy):
    """Schema-1 policies read true durations; loading one must fail with a clear reason."""
    stored = policy_to_checkpoint(policy)
    old = Checkpoint(tensors=stored.tensors, meta=stored.meta | {"schema": 1})
    with pytest.raises(CorruptCheckpointError, match="schema 1 is not 2"):
        policy_from_checkpoint(old)


def test_same_seed_same_initial_weights(nodes):
    a, b = make_policy("node-set", nodes, 16, seed=4), make_policy("node-set", nodes, 16, seed=4)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_int8_dynamic_quantisation_keeps_the_decisions_close(scrambled, workload):
    """The decision benchmark quantises the policy; node-set's split layers must survive it."""
    quantised = torch.ao.quantization.quantize_dynamic(scrambled, {torch.nn.Linear}, torch.qint8)
    sim = PlacementSim(scrambled.nodes, workload, batch=64)
    obs = sim.reset(list(range(64)))
    with torch.no_grad():
        exact, _ = scrambled(*scrambled.view(obs, sim.names))
        approx, _ = quantised(*quantised.view(obs, sim.names))
    agree = (exact.argmax(-1) == approx.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree
