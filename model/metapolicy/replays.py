"""Paired episodes already played, kept for the next validation.

Half of a validation is the backup on the old cluster, next to the reference heuristics there.
That half is the same computation the backup's own validation did when it became a candidate
(the same policy, nodes, workload and seeds: the candidate then, on its new cluster), so a
process that validates one adaptation after another (an operator worker, `metapolicy adapt`)
keeps those results and replays them instead of the episodes. The key holds everything the
episodes depend on: the policy's weights and configuration, the node profiles in order, the
workload (by value; a workload object compared by identity only matches itself), the seeds
and the sub-cluster size. Everything is deterministic, so a hit returns exactly what playing
would have.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np

from metapolicy.cluster import NodeProfile
from metapolicy.evaluation import Reference
from metapolicy.policy import SlotPolicy
from metapolicy.traces import Workload

LIMIT = 8  # clusters remembered per process: a few adaptations' worth


def fingerprint(policy: SlotPolicy) -> str:
    digest = hashlib.sha256(repr(sorted(policy.config().items())).encode())
    for name, tensor in sorted(policy.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def key(
    policy: SlotPolicy,
    nodes: Sequence[NodeProfile],
    workload: Workload | None,
    seeds: Sequence[int],
    subcluster: int | None,
) -> Hashable | None:
    """None when the workload cannot be hashed (then nothing is remembered)."""
    try:
        hash(workload)
    except TypeError:
        return None
    return (fingerprint(policy), tuple(nodes), workload, tuple(seeds), subcluster)


class Replays:
    """An LRU of (policy's returns, reference) by `key`."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._items: OrderedDict[Hashable, tuple[np.ndarray, Reference]] = OrderedDict()

    def get(self, k: Hashable | None) -> tuple[np.ndarray, Reference] | None:
        if k is None or k not in self._items:
            return None
        self._items.move_to_end(k)
        returns, reference = self._items[k]
        return returns.copy(), reference

    def put(self, k: Hashable | None, returns: np.ndarray, reference: Reference) -> None:
        if k is None:
            return
        self._items[k] = (returns.copy(), reference)
        self._items.move_to_end(k)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


REPLAYS = Replays()
