"""Big node-set checkpoints keep their slot table on an int8 grid (metapolicy.compact)."""

import pytest
import torch

from metapolicy import compact
from metapolicy.checkpoint import policy_from_checkpoint, policy_to_checkpoint
from metapolicy.cluster import make_cluster, resize_cluster
from metapolicy.policy import make_policy
from metapolicy.sim import PlacementSim
from metapolicy.strategies import STRATEGIES, resize
from tests.model.test_strategies import env_probs

BIG = compact.COMPACT_ABOVE + 20


@pytest.fixture(scope="module")
def big_policy():
    policy = make_policy("node-set", make_cluster(BIG, seed=2), hidden=16)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    return compact.snap(policy)


def same_state(a, b) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_the_grid_round_trips_exactly_and_snapping_twice_changes_nothing():
    table = torch.randn(50, 16) * torch.logspace(-3, 2, 50)[:, None]
    table[3] = 0.0
    codes, exponent = compact.quantize(table)
    assert codes.dtype == torch.int8 and exponent.dtype == torch.int8
    snapped = compact.dequantize(codes, exponent)
    assert torch.equal(compact.dequantize(*compact.quantize(snapped)), snapped)
    assert torch.count_nonzero(snapped[3]) == 0
    step = torch.exp2(exponent.float())[:, None]
    assert bool(((snapped - table).abs() <= step / 2 + 1e-12).all())
    assert bool((table.abs().amax(1) <= 127 * step[:, 0]).all())


def test_a_big_table_is_stored_in_int8_and_loads_bit_for_bit(big_policy):
    checkpoint = policy_to_checkpoint(big_policy)
    assert compact.CODES in checkpoint.tensors and compact.TABLE not in checkpoint.tensors
    assert checkpoint.tensors[compact.CODES].dtype == torch.int8
    assert same_state(policy_from_checkpoint(checkpoint), big_policy)


def test_a_small_table_is_stored_as_it_is(policy):
    checkpoint = policy_to_checkpoint(compact.snap(policy))
    assert compact.CODES not in checkpoint.tensors
    assert same_state(policy_from_checkpoint(checkpoint), policy)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_masked_equivalence_holds_through_the_grid_and_the_store(big_policy, workload, strategy):
    """Resize a stored big policy, snap the candidate as the pipeline does and store it: with
    the new slots masked it still decides exactly as the backup (survivors never move)."""
    backup = policy_from_checkpoint(policy_to_checkpoint(big_policy))
    new_nodes = resize_cluster(backup.nodes, 3, seed=4)
    candidate = compact.snap(resize(backup, new_nodes, strategy))
    stored = policy_from_checkpoint(policy_to_checkpoint(candidate))
    assert same_state(stored, candidate)
    old = set(backup.slot_names)
    sim = PlacementSim(new_nodes, workload, batch=2, available=[n.name in old for n in new_nodes])
    obs = sim.reset(5)
    for _ in range(3):
        torch.testing.assert_close(
            env_probs(stored, obs, sim.names), env_probs(backup, obs, sim.names)
        )
        obs, *_ = sim.step(backup.act(obs, sim.names))
