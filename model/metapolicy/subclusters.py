"""Episodes on sub-clusters: a big node set seen a few dozen nodes at a time.

A node-set policy's weights are shared by every node, and kube-scheduler only offers an
extender a sample of the feasible nodes anyway (`percentageOfNodesToScore`). So on a cluster
of more than `size` nodes, training, weight selection and validation play each episode on
`size` nodes drawn from it: a step costs the same at N = 50 and at N = 5,000, and the policy
learns to act on the kind of candidate list it is served. A cluster of at most `size` nodes
is played whole, exactly as before.

How the nodes of a sub-cluster are drawn, so that every kind of node is seen:

- Nodes are grouped into kinds by profile: cpu, memory and latency on a log scale in
  half-octave bins, coarsened until there are at most `size / 2` kinds.
- Every kind gets a quota proportional to its share of the cluster and at least one node
  (largest remainder), so every sub-cluster holds every kind, the biggest nodes included.
- Evaluation (`for_seeds`): the episode seed picks the sub-cluster, random nodes of each kind,
  so every agent played on the same seeds plays on the same sub-clusters (common random
  numbers for the cluster too).
- Training (`in_turn`): consecutive draws walk through each kind in a fixed shuffled order, so
  every node, and with it every slot embedding, is drawn once before any is drawn twice.
- Tasks arrive at the rate of the expected sub-cluster capacity (the same for every draw), so
  `load` means the same at every cluster size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import overload

import numpy as np

from metapolicy.cluster import NodeProfile, check_unique

#: Nodes per episode on a bigger cluster. Steps cost about what they cost on a cluster this
#: size; 32 keeps one step within 2x of a 20-node cluster's.
DEFAULT_SIZE = 32
_BINS_PER_OCTAVE = 2.0
_DRAW_SALT = 0x5C1  # keeps the evaluation draws apart from every other use of a seed


def _kind_keys(nodes: Sequence[NodeProfile], bins: float) -> list[tuple[int, ...]]:
    return [
        tuple(
            round(math.log2(value) * bins)
            for value in (node.cpu, node.memory_mib, node.latency_ms + 1.0)
        )
        for node in nodes
    ]


def _quotas(sizes: np.ndarray, total: int) -> np.ndarray:
    """`total` seats over kinds of `sizes` nodes: proportional, at least one each, largest
    remainder first."""
    share = total * sizes / sizes.sum()
    quota = np.minimum(np.maximum(1, np.floor(share)).astype(np.int64), sizes)
    while quota.sum() > total:
        quota[np.argmax(np.where(quota > 1, quota - share, -np.inf))] -= 1
    while quota.sum() < total:
        quota[np.argmax(np.where(quota < sizes, share - quota, -np.inf))] += 1
    return quota


class SubClusters(Sequence[NodeProfile]):
    """The whole node set (as a sequence of its nodes) plus how episodes draw `size` of them.

    `PlacementSim` given one plays every episode on its own sub-cluster; everything that builds
    a simulator from a node list (training, selection, evaluation, distillation) therefore
    works on sub-clusters when handed one instead of a list.
    """

    def __init__(self, nodes: Sequence[NodeProfile], size: int, salt: int = 0) -> None:
        self.nodes = check_unique(nodes)
        if not 1 <= size < len(self.nodes):
            raise ValueError(
                f"a sub-cluster of {size} nodes needs a cluster of more ({len(self.nodes)})"
            )
        self.size = size
        bins = _BINS_PER_OCTAVE
        keys = _kind_keys(self.nodes, bins)
        while len(set(keys)) > max(1, size // 2):
            bins /= 2
            keys = _kind_keys(self.nodes, bins)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key, []).append(index)
        order = np.random.default_rng([salt, _DRAW_SALT])
        self.kinds = [np.array(groups[key]) for key in sorted(groups)]
        self._cycle = [order.permutation(kind) for kind in self.kinds]
        self.quota = _quotas(np.array([len(kind) for kind in self.kinds]), size)
        cpu = np.array([n.cpu for n in self.nodes])
        memory = np.array([n.memory_mib for n in self.nodes])
        # The expected capacity of a draw: what task arrival rates are set for.
        self.capacity = float(
            sum(q * cpu[kind].mean() for q, kind in zip(self.quota, self.kinds, strict=True))
        )
        self.largest = (float(cpu.max()), float(memory.max()))

    # ----- the node set ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    @overload
    def __getitem__(self, index: int) -> NodeProfile: ...
    @overload
    def __getitem__(self, index: slice) -> list[NodeProfile]: ...
    def __getitem__(self, index):
        return self.nodes[index]

    def __repr__(self) -> str:
        kinds = len(self.kinds)
        return f"SubClusters({len(self.nodes)} nodes, {self.size} per episode, {kinds} kinds)"

    # ----- draws ---------------------------------------------------------------------------------
    def for_seeds(self, seeds: Sequence[int]) -> np.ndarray:
        """(B, size) node indices, ascending: the sub-cluster of each episode seed."""
        out = np.empty((len(seeds), self.size), np.int64)
        for row, seed in enumerate(seeds):
            rng = np.random.default_rng([int(seed), _DRAW_SALT])
            picks = [
                kind[rng.choice(len(kind), q, replace=False)]
                for kind, q in zip(self.kinds, self.quota, strict=True)
            ]
            out[row] = np.sort(np.concatenate(picks))
        return out

    def in_turn(self, first: int, count: int) -> np.ndarray:
        """(count, size) node indices, ascending: draws `first` .. `first + count - 1` of the
        training cycle, in which every node of a kind comes once before any comes twice."""
        out = np.empty((count, self.size), np.int64)
        for row in range(count):
            draw = first + row
            picks = [
                cycle[(draw * q + np.arange(q)) % len(cycle)]
                for cycle, q in zip(self._cycle, self.quota, strict=True)
            ]
            out[row] = np.sort(np.concatenate(picks))
        return out


def sampled(nodes: Sequence[NodeProfile], size: int | None, salt: int = 0) -> Sequence[NodeProfile]:
    """`nodes` as episodes should see them: `SubClusters` of `size` when the cluster is
    bigger, the nodes themselves otherwise (or when `size` is 0 or None: whole clusters)."""
    if isinstance(nodes, SubClusters):
        nodes = nodes.nodes
    if size and len(nodes) > size:
        return SubClusters(nodes, size, salt)
    return list(nodes)
