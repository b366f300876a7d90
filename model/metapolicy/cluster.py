"""Cluster model: the nodes a policy places onto, and generators for test and benchmark clusters."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class InvalidNodeProfile(ValueError):
    """A node description that cannot be used; the message names the node and the field."""


@dataclass(frozen=True)
class NodeProfile:
    """What the policy knows about a node. Validated on construction so bad input fails early."""

    name: str
    cpu: float  # allocatable cores
    memory_mib: float  # allocatable memory
    latency_ms: float  # network latency from the task source
    zone: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidNodeProfile(f"node name {self.name!r} is not a valid Kubernetes name")
        for field, low in (("cpu", 0.0), ("memory_mib", 0.0), ("latency_ms", None)):
            value = getattr(self, field)
            if value is None:
                raise InvalidNodeProfile(f"node {self.name}: {field} is missing")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise InvalidNodeProfile(
                    f"node {self.name}: {field}={value!r} is not a number"
                ) from None
            if not math.isfinite(number):
                raise InvalidNodeProfile(f"node {self.name}: {field}={value!r} is not finite")
            if (low is not None and number <= low) or number < 0:
                raise InvalidNodeProfile(f"node {self.name}: {field}={value!r} must be positive")
            object.__setattr__(self, field, number)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NodeProfile:
        missing = {"name", "cpu", "memory_mib", "latency_ms"} - data.keys()
        if missing:
            raise InvalidNodeProfile(f"node {data.get('name', '?')}: missing {sorted(missing)}")
        return cls(
            name=data["name"],
            cpu=data["cpu"],
            memory_mib=data["memory_mib"],
            latency_ms=data["latency_ms"],
            zone=data.get("zone"),
        )


class TooManyNodes(ValueError):
    """More eligible nodes than the policy may have slots for."""


def check_node_set(nodes: Iterable[NodeProfile], max_nodes: int) -> list[NodeProfile]:
    """A node set a policy can be trained or adapted for: non-empty, unique, within maxNodes."""
    nodes = check_unique(nodes)
    if not nodes:
        raise ValueError("no eligible nodes: a policy needs at least one")
    if len(nodes) > max_nodes:
        raise TooManyNodes(f"{len(nodes)} eligible nodes exceed maxNodes={max_nodes}")
    return nodes


def check_unique(nodes: Iterable[NodeProfile]) -> list[NodeProfile]:
    """Node names are slot identities, so a duplicate would silently merge two nodes."""
    nodes = list(nodes)
    seen: set[str] = set()
    for node in nodes:
        if node.name in seen:
            raise InvalidNodeProfile(f"node {node.name} appears twice")
        seen.add(node.name)
    return nodes


# Three tiers: big nodes are close and fast, small ones far. This is what makes
# "lowest latency first" a trap: the big nodes are also the only home of big tasks.
TIERS = (
    # (weight, cpu, memory MiB, latency range ms)
    (0.25, 16.0, 65536.0, (2.0, 4.0)),
    (0.35, 8.0, 32768.0, (6.0, 10.0)),
    (0.40, 4.0, 16384.0, (12.0, 20.0)),
)


def sample_nodes(count: int, seed: int, start: int = 0, prefix: str = "node") -> list[NodeProfile]:
    """`count` heterogeneous nodes named `{prefix}-{start:02d}`, ... (deterministic per seed)."""
    rng = np.random.default_rng([seed, start])
    weights = np.array([tier[0] for tier in TIERS])
    nodes = []
    for offset in range(count):
        index = start + offset
        tier = TIERS[0] if index == 0 else TIERS[rng.choice(len(TIERS), p=weights)]
        _, cpu, memory, (lat_lo, lat_hi) = tier
        nodes.append(
            NodeProfile(
                name=f"{prefix}-{index:02d}",
                cpu=cpu,
                memory_mib=memory,
                latency_ms=round(float(rng.uniform(lat_lo, lat_hi)), 2),
            )
        )
    return nodes


def make_cluster(count: int, seed: int = 0) -> list[NodeProfile]:
    """A benchmark cluster; `make_cluster(n)` is a prefix of `make_cluster(n + k)` only by name."""
    return sample_nodes(count, seed)


def resize_cluster(
    nodes: Sequence[NodeProfile], delta: int, seed: int = 0, remove: Sequence[str] | None = None
) -> list[NodeProfile]:
    """Grow by `delta` fresh nodes, or shrink by removing `remove` (default: middle nodes)."""
    nodes = list(nodes)
    if delta >= 0:
        start = 1 + max((int(n.name.rsplit("-", 1)[-1]) for n in nodes), default=-1)
        return nodes + sample_nodes(delta, seed + 7919, start=start)
    if remove is None:
        middle = len(nodes) // 2
        # Node 0 is always of the biggest tier: keep it so every cluster can host big tasks.
        lo = max(1, middle + delta // 2)
        remove = [n.name for n in nodes[lo : lo - delta]]
    if len(remove) != -delta:
        raise ValueError(f"asked to remove {-delta} nodes but named {len(remove)}")
    return [n for n in nodes if n.name not in set(remove)]
