import numpy as np
import pytest

from metapolicy.baselines import HEURISTICS, make_random
from metapolicy.evaluation import (
    Reference,
    episode_returns,
    evaluation_seeds,
    reference,
    retention,
)


@pytest.fixture
def seeds():
    return evaluation_seeds(8)


def test_score_is_zero_for_random_and_one_for_the_best_heuristic(nodes, workload, seeds):
    ref = reference(nodes, workload, seeds)
    assert ref.score(ref.random) == pytest.approx(0.0)
    assert ref.score(ref.heuristics[ref.best]) == pytest.approx(1.0)
    assert all(ref.score(r) <= 1.0 + 1e-9 for r in ref.heuristics.values())


def test_paired_evaluation_is_reproducible(nodes, workload, seeds):
    agent = HEURISTICS["myopic"]
    np.testing.assert_array_equal(
        episode_returns(agent, nodes, workload, seeds),
        episode_returns(agent, nodes, workload, seeds),
    )
    random_a = episode_returns(make_random(3), nodes, workload, seeds)
    random_b = episode_returns(make_random(3), nodes, workload, seeds)
    np.testing.assert_array_equal(random_a, random_b)


def test_retention_of_a_policy_against_itself_is_one_with_an_interval(nodes, workload, seeds):
    ref = reference(nodes, workload, seeds)
    myopic = ref.heuristics["myopic"]
    kept = retention(myopic, ref, myopic, ref)
    assert kept.value == pytest.approx(1.0)
    assert kept.low <= 1.0 <= kept.high


def test_retention_interval_brackets_the_point_and_widens_with_noise(nodes, workload, seeds):
    ref = reference(nodes, workload, seeds)
    good, bad = ref.heuristics["myopic"], ref.heuristics["greedy"]
    kept = retention(bad, ref, good, ref)
    assert kept.low <= kept.value <= kept.high
    assert kept.value < 1.0


def test_resampled_scores_are_the_score_of_each_resample():
    """The bootstrap scores every resample at once; each row must be `score` on those seeds."""
    rng = np.random.default_rng(3)
    ref = Reference(
        random=rng.normal(-5, 1, 12),
        heuristics={"a": rng.normal(-3, 1, 12), "b": rng.normal(-3, 1, 12)},
    )
    returns = rng.normal(-2.5, 1, 12)
    draws = rng.integers(0, 12, (50, 12))
    expected = [ref.score(returns, row) for row in draws]
    assert ref.resampled_scores(returns, draws) == pytest.approx(expected, rel=1e-12)
    assert len(set(np.round(expected, 9))) > 1  # the resamples differ, so the check has teeth
