"""Imitation warm start, and the model-predictive planner used as a reference ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.planner import Planner
from metapolicy.baselines import HEURISTICS, most_allocated
from metapolicy.evaluation import episode_returns, evaluation_seeds
from metapolicy.imitation import ImitationSettings, best_heuristic, imitate
from metapolicy.sim import PlacementSim


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


def test_the_best_teacher_is_chosen_on_selection_episodes(nodes, workload):
    name = best_heuristic(nodes, workload, episodes=4)
    assert name in HEURISTICS
    with pytest.raises(ValueError, match="unknown teacher"):
        imitate(None, nodes, workload, ImitationSettings(teacher="oracle"))


def test_the_planner_that_knows_the_future_beats_the_myopic_rule(nodes, workload):
    seeds = evaluation_seeds(2)
    myopic = episode_returns(HEURISTICS["myopic"], nodes, workload, seeds)
    planner = Planner(nodes, workload, horizon=16, true_future=True)
    planned = episode_returns(planner, nodes, workload, seeds)
    assert planned.mean() > myopic.mean()
    drawn = episode_returns(Planner(nodes, workload, horizon=16), nodes, workload, seeds)
    assert np.isfinite(drawn).all()
