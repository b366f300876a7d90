"""Imitation warm start: from the best heuristic where the myopic rule is far off."""

from __future__ import annotations

import pytest

from metapolicy import imitation
from metapolicy.baselines import HEURISTICS, most_allocated
from metapolicy.cluster import make_cluster
from metapolicy.evaluation import evaluation_seeds
from metapolicy.imitation import ImitationSettings, best_heuristic, imitate, untrained_gap
from metapolicy.policy import make_policy
from metapolicy.sim import PlacementSim
from metapolicy.subclusters import sampled
from metapolicy.training import TrainingSettings, train_initial


def agreement(policy, nodes, workload, teacher, seeds) -> float:
    sim = PlacementSim(nodes, workload, batch=len(seeds))
    obs, done, same, total = sim.reset(seeds), False, 0, 0
    while not done:
        want = teacher(sim, obs)
        got = policy.act(obs, sim.names)
        same, total = same + (want == got).sum(), total + len(want)
        obs, _, done, _ = sim.step(want)
    return same / total


def test_imitation_makes_the_policy_choose_like_its_teacher(nodes, workload, policy):
    seeds = evaluation_seeds(4)
    before = agreement(policy, nodes, workload, most_allocated, seeds)
    result = imitate(
        policy,
        nodes,
        workload,
        ImitationSettings(teacher="most_allocated", steps=2048, epochs=30, batch=64),
    )
    after = agreement(policy, nodes, workload, most_allocated, seeds)
    assert result.teacher == "most_allocated"
    assert before < 0.2 and after > 0.35, (before, after)  # 1 in 6 by chance


def test_the_reported_imitation_loss_is_a_cross_entropy(nodes, workload):
    """Not the smoothed objective: its share on the nodes the filter masks (logit -1e9) makes
    it about 1e7 whenever a node is full."""
    policy = make_policy("node-set", nodes, hidden=16, seed=0)
    settings = ImitationSettings(teacher="most_allocated", steps=1024, epochs=1, batch=64)
    result = imitate(policy, nodes, workload, settings)
    assert 0 < result.loss < 100, result.loss  # untrained logits differ by tens, not 1e7


def test_the_best_teacher_is_chosen_on_selection_episodes(nodes, workload):
    name = best_heuristic(nodes, workload, episodes=4)
    assert name in HEURISTICS
    with pytest.raises(ValueError, match="unknown teacher"):
        imitate(None, nodes, workload, ImitationSettings(teacher="oracle"))


def test_training_warm_starts_only_when_the_myopic_start_is_far_off(nodes, workload):
    fast = dict(hidden=16, steps=1024, episodes=2, select_episodes=2, workload=workload)
    never = train_initial(nodes, TrainingSettings(imitate_below=0.0, **fast))
    assert never.teacher is None
    always = train_initial(nodes, TrainingSettings(imitate_below=2.0, **fast))  # S < 2: imitate
    assert always.teacher in HEURISTICS
    score, best = untrained_gap(make_policy("node-set", nodes, 16), nodes, workload, episodes=4)
    assert 0.5 < score < 1.5 and best in HEURISTICS


def test_big_clusters_imitate_with_half_the_budget(monkeypatch, workload):
    """Training on sub-clusters (a cluster above 32 nodes) imitates 32k placements for 8
    epochs, a whole small cluster 64k for 16; never more placements than the training's own
    step budget."""
    used = []
    monkeypatch.setattr(imitation, "imitate", lambda *args: used.append(args[3]))
    monkeypatch.setattr(imitation, "untrained_gap", lambda *args: (0.0, "most_allocated"))
    for size, budget in ((8, 300_000), (40, 300_000), (8, 1024), (40, 20_000)):
        nodes = make_cluster(size, seed=1)
        policy = make_policy("node-set", nodes, hidden=16, seed=0)
        imitation.warm_start(policy, sampled(nodes, 32), workload, below=0.9, budget=budget)
    assert [(u.steps, u.epochs) for u in used] == [
        (65_536, 16),
        (32_768, 8),
        (1024, 16),
        (20_000, 8),
    ]
