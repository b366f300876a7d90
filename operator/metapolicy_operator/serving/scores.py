"""Scores on kube-scheduler's extender scale, 0..10 (`MaxExtenderPriority`).

kube-scheduler adds `Score x weight x 10` (MaxNodeScore / MaxExtenderPriority) to the sum of
its own score plugins, so a score here only matters relative to the other nodes' scores, times
the configured `weight`.

- The policy's choice (the argmax of its logits, as in training and evaluation) gets 10, and
  so does any node tied with it.
- Every other node gets at most `RUNNER_UP` = 5: `round(5 x p / p_top)`, with `p / p_top =
  exp(logit - top logit)` the policy's probability of that node relative to its choice. So the
  choice leads every other node by at least 5 points (5 x weight x 10 in kube-scheduler), and
  among the rest the policy's ranking still shows, for when the choice is not feasible after
  all: a near-tie gets 5, a node the policy would almost never pick 0.
- Heuristic fallback: kube-scheduler's own default rule (`baselines.kube_default_scores`,
  NodeResourcesFit LeastAllocated + BalancedAllocation, 0..200) divided by 20, so the answer
  only amplifies what the default plugins already prefer.
- Neutral: 0 for every node, adding nothing: the extender is transparent.
"""

from __future__ import annotations

import numpy as np

from metapolicy.baselines import kube_default_scores
from metapolicy.policy import MASKED_LOGIT
from metapolicy_operator.serving.wire import MAX_SCORE, MIN_SCORE

TOP = MAX_SCORE
RUNNER_UP = 5
NEUTRAL = MIN_SCORE
TIE = 1e-4  # logits this close to the top are the policy's choice too
KUBE_DEFAULT_MAX = 200  # kube_default_scores' range is 0..200


def neutral_scores(count: int) -> np.ndarray:
    return np.full(count, NEUTRAL, np.int64)


def policy_scores(logits: np.ndarray) -> np.ndarray:
    """Logits over the candidates (MASKED_LOGIT: the policy cannot place there) -> 0..10."""
    logits = np.asarray(logits, float)
    valid = logits > MASKED_LOGIT / 2
    scores = np.zeros(len(logits), np.int64)
    if not valid.any():
        return scores
    top = logits[valid].max()
    relative = np.exp(np.minimum(logits - top, 0.0))
    scores[valid] = np.clip(np.floor(RUNNER_UP * relative[valid] + 0.5), 0, RUNNER_UP)
    scores[valid & (logits >= top - TIE)] = TOP
    return scores


def heuristic_scores(
    allocatable: tuple[np.ndarray, np.ndarray],
    requested: tuple[np.ndarray, np.ndarray],
    pod: tuple[float, float],
) -> np.ndarray:
    """kube-scheduler's default resource scoring mapped to 0..10; (cpu, memory) arrays in any
    one unit per resource. A node with no allocatable data gets 0."""
    cpu, memory = (np.asarray(a, float) for a in allocatable)
    known = (cpu > 0) & (memory > 0)
    scores = np.zeros(len(cpu), np.int64)
    if known.any():
        after = tuple(np.asarray(r, float)[known] + p for r, p in zip(requested, pod, strict=True))
        raw = kube_default_scores(after, (cpu[known], memory[known]))
        scores[known] = np.rint(raw * MAX_SCORE / KUBE_DEFAULT_MAX)
    return scores
