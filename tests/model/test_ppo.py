import pytest
import torch

from metapolicy.cluster import resize_cluster
from metapolicy.distill import DistillSettings, distill
from metapolicy.policy import make_policy
from metapolicy.ppo import PPOSettings, _group_advantages, train
from metapolicy.strategies import resize

TINY = dict(steps=512, envs=4, rollout=32, minibatches=2, epochs=2)


def snapshot(policy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in policy.state_dict().items()}


@pytest.mark.parametrize("group", [0, 2], ids=["gae", "group"])
def test_training_is_deterministic_for_a_seed(nodes, workload, group):
    runs = []
    for _ in range(2):
        policy = make_policy("node-set", nodes, hidden=16, seed=1)
        train(policy, nodes, workload, PPOSettings(**TINY, group=group, seed=7))
        runs.append(snapshot(policy))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    other = make_policy("node-set", nodes, hidden=16, seed=1)
    train(other, nodes, workload, PPOSettings(**TINY, group=group, seed=8))
    assert not all(torch.equal(runs[0][k], v) for k, v in other.state_dict().items())


def test_trunk_freeze_trains_only_the_resized_layers(policy, workload):
    before = snapshot(policy)
    train(policy, policy.nodes, workload, PPOSettings(**TINY, freeze="trunk"))
    resized = {id(p) for p in policy.resized_parameters()}
    for name, param in policy.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == (id(param) in resized), name
    assert all(p.requires_grad for p in policy.parameters())  # unfrozen afterwards


def test_gradual_freeze_ends_up_training_everything(policy, workload):
    before = snapshot(policy)
    train(policy, policy.nodes, workload, PPOSettings(**TINY, freeze="gradual"))
    moved = [n for n, p in policy.named_parameters() if not torch.equal(before[n], p.detach())]
    assert set(moved) == {n for n, _ in policy.named_parameters()}


def test_distillation_lowers_the_kl_to_the_teacher(scrambled, workload):
    policy = scrambled
    student = resize(policy, resize_cluster(policy.nodes, 3), "knowledge_distillation")
    settings = DistillSettings(steps=512, envs=8, epochs=3, batch=64)
    before, after = distill(student, policy, student.nodes, workload, settings)
    assert before > 1e-4
    assert after < 0.5 * before


def test_group_advantage_is_return_minus_the_others_mean():
    rewards = torch.tensor(
        [[1.0, 3.0, 0.0, 0.0], [1.0, 1.0, 2.0, 2.0]]
    )  # (steps, envs), groups of 2
    advantages, returns = _group_advantages(rewards, group=2, gamma=0.5)
    torch.testing.assert_close(returns[0], torch.tensor([1.5, 3.5, 1.0, 1.0]))
    torch.testing.assert_close(advantages[0], torch.tensor([-2.0, 2.0, 0.0, 0.0]))
    torch.testing.assert_close(advantages[1], torch.tensor([0.0, 0.0, 0.0, 0.0]))


def test_group_mode_needs_whole_groups(nodes, workload):
    policy = make_policy("node-set", nodes, hidden=16)
    with pytest.raises(ValueError, match="envs=6 is not a multiple of group=4"):
        train(policy, nodes, workload, PPOSettings(steps=64, envs=6, group=4))
