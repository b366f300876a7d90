"""The same pods in a cluster scheduled by the default rule alone, for the demo's comparison.

Each pod the driver binds is also placed in a ledger of its own by kube-scheduler's default
resource scoring (`kube_rules.default_scores`, ties broken at random), against that ledger's
own usage, and leaves it when the real pod is deleted. At the end, per node, the pods and cpu
the policy placed there sit next to what the default rule would have placed over the same
arrivals and departures. A pod the default rule cannot fit anywhere counts as `unplaced`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from e2e.kube_rules import Allocatable, Usage, default_scores, misfit, select_host
from metapolicy_operator.pods import Requests


@dataclass
class Totals:
    """Pods placed on a node over a run, and the cpu (cores) they requested."""

    pods: int = 0
    cpu: float = 0.0

    def add(self, requests: Requests) -> None:
        self.pods += 1
        self.cpu += requests.cpu


@dataclass
class Counterfactual:
    seed: int = 2
    placed: dict[str, Totals] = field(default_factory=dict)  # node -> over the whole run
    unplaced: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._running: dict[str, tuple[str, Requests]] = {}  # pod key -> (node, requests)
        self._lock = threading.Lock()

    def place(self, key: str, requests: Requests, nodes: Mapping[str, Allocatable]) -> str | None:
        """Where the default rule alone puts this pod now (None: it fits nowhere)."""
        with self._lock:
            usage: dict[str, Usage] = {}
            for node, held in self._running.values():
                usage[node] = usage.get(node, Usage()).plus(held)
            fits = {
                n: room
                for n, room in nodes.items()
                if misfit(requests, room, usage.get(n, Usage())) is None
            }
            if not fits:
                self.unplaced += 1
                return None
            node = select_host(default_scores(requests, fits, usage), self._rng)
            self._running[key] = (node, requests)
            self.placed.setdefault(node, Totals()).add(requests)
            return node

    def remove(self, key: str) -> None:
        with self._lock:
            self._running.pop(key, None)
