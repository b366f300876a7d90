import torch

from metapolicy.adapt import AdaptationSettings, adapt, rollback_drill
from metapolicy.cluster import resize_cluster
from metapolicy.evaluation import evaluation_seeds
from metapolicy.ppo import TrainStats
from metapolicy.selection import BestWeights, selection_seeds


def weights(policy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in policy.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_selection_episodes_are_not_the_validation_episodes():
    assert set(selection_seeds(256)).isdisjoint(evaluation_seeds(256))


def test_a_regression_during_training_is_not_kept(policy, workload):
    good = weights(policy)
    best = BestWeights(policy, policy.nodes, workload, episodes=4, every=1)
    rollback_drill(policy)  # an "update" that makes the policy pick the most expensive node
    best(TrainStats(steps=512, updates=1))
    assert best.restore(TrainStats(steps=512, updates=1)) == 0
    assert same(weights(policy), good)
    assert [steps for steps, _, _ in best.curve] == [0, 512]
    assert best.curve[1][2] < best.curve[0][2]


def test_an_improvement_during_training_is_kept(policy, workload):
    rollback_drill(policy)
    best = BestWeights(policy, policy.nodes, workload, episodes=4, every=2)
    with torch.no_grad():
        policy.cost_weight.fill_(-30.0)  # back to the cost prior: much better
    improved = weights(policy)
    best(TrainStats(steps=256, updates=1))  # not a scoring update (every=2)...
    assert len(best.curve) == 1
    assert best.restore(TrainStats(steps=256, updates=1)) == 256  # ...but the last one is
    assert same(weights(policy), improved)


def test_adaptation_keeps_the_best_fine_tuned_weights(policy, workload):
    settings = AdaptationSettings(
        budget_steps=2048, episodes=4, select_episodes=4, min_retention=0.0, workload=workload
    )
    result = adapt(policy, resize_cluster(policy.nodes, 1), settings)
    steps = [s for s, _, _ in result.curve]
    returns = [r for _, _, r in result.curve]
    assert steps[0] == 0 and steps[-1] == 2048
    assert result.selected_steps == steps[returns.index(max(returns))]
    assert "selectedSteps" in result.record.to_json() and "curve" not in result.record.to_json()


def test_selection_can_be_switched_off(policy, workload):
    settings = AdaptationSettings(
        budget_steps=1024, episodes=4, select_episodes=0, min_retention=0.0, workload=workload
    )
    result = adapt(policy, resize_cluster(policy.nodes, 1), settings)
    assert result.selected_steps is None and result.curve == []
    assert "select" not in result.timings
