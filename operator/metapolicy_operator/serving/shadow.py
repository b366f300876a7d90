"""Shadow mode: what a policy would have chosen, and whether the pod landed there.

A shadow policy answers neutral scores (the default scheduler decides) and its choice is kept
here by pod uid until the pod cache sees the pod bound; then `metapolicy_shadow_bound_total`
counts the pod and `metapolicy_shadow_agreements_total` counts it if it landed on the choice.
Their ratio is how often the default scheduler already does what the policy would do: the dry
run to look at before switching a policy to active. Bounded: the oldest choices go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from metapolicy_operator.serving.cache import PodInfo
from metapolicy_operator.serving.metrics import ServeMetrics

CAPACITY = 65_536
MAX_AGE_S = 3_600.0  # a pod unbound for an hour is not coming back to this decision


class ShadowLog:
    def __init__(
        self, metrics: ServeMetrics, capacity: int = CAPACITY, max_age_s: float = MAX_AGE_S
    ) -> None:
        self.metrics = metrics
        self.capacity = capacity
        self.max_age_s = max_age_s
        self._choices: OrderedDict[str, tuple[str, str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._choices)

    def record(self, uid: str, policy: str, node: str) -> None:
        """The latest choice for the pod wins (kube-scheduler retries unschedulable pods)."""
        self._choices[uid] = (policy, node, time.monotonic())
        self._choices.move_to_end(uid)
        self._expire()

    def bound(self, pod: PodInfo) -> None:
        """The pod cache saw the pod bound to `pod.node` (a `ClusterCache.pod_bound` listener)."""
        choice = self._choices.pop(pod.uid, None)
        if choice is None:
            return
        policy, node, _ = choice
        self.metrics.shadow_bound.labels(policy).inc()
        if node == pod.node:
            self.metrics.shadow_agreements.labels(policy).inc()

    def _expire(self) -> None:
        oldest = time.monotonic() - self.max_age_s
        while self._choices and (
            len(self._choices) > self.capacity or next(iter(self._choices.values()))[2] < oldest
        ):
            self._choices.popitem(last=False)
