"""Preferences and the fallback on kube-scheduler's 0..10 extender scale."""

import numpy as np

from metapolicy.baselines import kube_default_scores
from metapolicy.policy import MASKED_LOGIT
from metapolicy_operator.serving.scores import (
    RUNNER_UP,
    TOP,
    heuristic_scores,
    neutral_scores,
    policy_scores,
)


def test_the_choice_gets_10_and_every_other_node_at_most_5():
    scores = policy_scores(np.array([0.3, 2.0, 1.99, -4.0, MASKED_LOGIT]))
    assert scores[1] == TOP
    assert scores[2] == RUNNER_UP  # a near tie: 5, still 5 points behind
    assert scores[0] == 1  # exp(0.3 - 2) = 0.18 of the choice's probability
    assert scores[3] == 0 and scores[4] == 0


def test_ties_with_the_choice_all_get_10():
    assert policy_scores(np.array([1.0, 1.0, 0.0])).tolist() == [10, 10, 2]


def test_nothing_to_choose_gives_zeros():
    assert policy_scores(np.array([MASKED_LOGIT, MASKED_LOGIT])).tolist() == [0, 0]


def test_heuristic_scores_are_the_default_rule_over_20():
    allocatable = (np.array([4000, 4000, 0]), np.array([8192, 8192, 0]))
    requested = (np.array([0, 3000, 0]), np.array([0, 1024, 0]))
    scores = heuristic_scores(allocatable, requested, (1000, 1024))
    raw = kube_default_scores(
        (np.array([1000, 4000]), np.array([1024, 2048])),
        (np.array([4000, 4000]), np.array([8192, 8192])),
    )
    assert scores.tolist() == [*np.rint(raw / 20).astype(int).tolist(), 0]
    assert scores[0] > scores[1]  # the emptier node, as LeastAllocated prefers


def test_neutral_is_zero_everywhere():
    assert neutral_scores(3).tolist() == [0, 0, 0]
