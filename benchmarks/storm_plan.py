"""The storm's plan: a model of each node group's state, and random Node changes that keep every
group within bounds (3-16 nodes, at least 2 eligible), so a valid adaptation is always possible
once the storm is over. The model is what the API will hold once a group's writes are done:
each group has one writer thread, so its changes stay ordered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.embedded import node_spec
from metapolicy.cluster import sample_nodes

GROUP_LABEL = "bench.metapolicy.dev/group"
MIN_NODES, MAX_NODES, MIN_ELIGIBLE = 3, 16, 2  # per group; 16 <= the default maxNodes 20
MAX_TAINTED = 2  # per group: an autoscaler drains a few nodes at a time, then deletes them
KINDS = ("join", "leave", "taint", "cordon", "ready")
WEIGHTS = (0.2, 0.2, 0.1, 0.2, 0.3)
TAINTS = ("cluster-autoscaler", "karpenter", "karpenter-v0")
RECOVER = 0.6  # chance that a cordon/flap change brings a down node back rather than one down


@dataclass
class NodeState:
    ready: bool = True
    cordoned: bool = False
    tainted: bool = False

    @property
    def eligible(self) -> bool:
        return self.ready and not self.cordoned and not self.tainted


@dataclass
class Group:
    """What the API will hold for one group once its writes are done (writes are ordered)."""

    name: str
    seed: int
    nodes: dict[str, NodeState] = field(default_factory=dict)
    next_index: int = 0

    def profile(self) -> dict[str, Any]:
        profile = sample_nodes(1, self.seed, start=self.next_index, prefix=f"st-{self.name}")[0]
        self.next_index += 1
        return node_spec(profile, {GROUP_LABEL: self.name})

    def eligible_count(self) -> int:
        return sum(n.eligible for n in self.nodes.values())

    def may_lose(self, name: str) -> bool:
        """Whether `name` may become ineligible without leaving too few eligible nodes."""
        return not self.nodes[name].eligible or self.eligible_count() > MIN_ELIGIBLE


def propose(group: Group, kind: str, rng) -> tuple[str, str, Any] | None:
    """One change of `kind` the group allows now, applied to the model; None if none is."""
    names = sorted(group.nodes)
    if kind == "join":
        if len(names) >= MAX_NODES:
            return None
        spec = group.profile()
        group.nodes[spec["name"]] = NodeState()
        return "join", spec["name"], spec
    if kind == "leave":
        if len(names) <= MIN_NODES:
            return None
        tainted = [n for n in names if group.nodes[n].tainted]  # the autoscaler's own order
        choices = tainted or [n for n in names if group.may_lose(n)]
        if not choices:
            return None
        name = str(rng.choice(choices))
        del group.nodes[name]
        return "leave", name, None
    if kind == "taint":
        choices = [n for n in names if not group.nodes[n].tainted and group.may_lose(n)]
        if not choices or sum(group.nodes[n].tainted for n in names) >= MAX_TAINTED:
            return None
        name = str(rng.choice(choices))
        group.nodes[name].tainted = True
        return "taint", name, str(rng.choice(TAINTS))
    # Cordons and flaps mostly come back (an uncordon, Ready again) when a node is down.
    attribute, down = ("cordoned", True) if kind == "cordon" else ("ready", False)
    downs = [n for n in names if getattr(group.nodes[n], attribute) == down]
    if downs and rng.random() < RECOVER:
        name, value = str(rng.choice(downs)), not down
    else:
        ups = [n for n in names if getattr(group.nodes[n], attribute) != down]
        choices = [n for n in ups if group.may_lose(n)]
        if not choices:
            return None
        name, value = str(rng.choice(choices)), down
    setattr(group.nodes[name], attribute, value)
    return kind, name, value


def plan(group: Group, count: int, rng) -> list[tuple[str, str, Any]]:
    changes: list[tuple[str, str, Any]] = []
    while len(changes) < count:
        change = propose(group, str(rng.choice(KINDS, p=WEIGHTS)), rng)
        if change is not None:
            changes.append(change)
    return changes
