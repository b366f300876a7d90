"""Validation replays the backup's side when its own validation already played it."""

import numpy as np
import pytest

from metapolicy import adapt as adapt_module
from metapolicy.adapt import AdaptationSettings, validate, zero_shot
from metapolicy.cluster import NodeProfile, make_cluster, resize_cluster
from metapolicy.policy import make_policy
from metapolicy.replays import REPLAYS, Replays, key
from metapolicy.strategies import resize


@pytest.fixture(autouse=True)
def empty():
    REPLAYS.clear()
    yield
    REPLAYS.clear()


def same(a, b) -> None:
    for field in ("candidate_new", "backup_old", "backup_masked"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for ref_a, ref_b in ((a.reference_new, b.reference_new), (a.reference_old, b.reference_old)):
        np.testing.assert_array_equal(ref_a.random, ref_b.random)
        for name, returns in ref_a.heuristics.items():
            np.testing.assert_array_equal(returns, ref_b.heuristics[name])


@pytest.mark.parametrize("size", [0, 8])  # whole clusters, and sub-clusters of 8
def test_the_next_validation_replays_exactly_what_it_would_play(workload, monkeypatch, size):
    nodes = make_cluster(12, seed=4)
    settings = AdaptationSettings(budget_steps=0, episodes=3, workload=workload, subcluster=size)
    first = zero_shot(make_policy("node-set", nodes, hidden=16), resize_cluster(nodes, 1), settings)
    served = first.candidate
    calls = []
    real = adapt_module.reference_stats
    monkeypatch.setattr(
        adapt_module, "reference_stats", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    candidate = resize(served, resize_cluster(served.nodes, -1, remove=["node-03"]), "zero_padding")
    replayed = validate(candidate, served, workload, 3, size)
    assert len(calls) == 1  # the new cluster only: the backup's side was replayed
    REPLAYS.clear()
    played = validate(candidate, served, workload, 3, size)
    assert len(calls) == 3
    same(replayed, played)


def test_anything_the_episodes_depend_on_changes_the_key(workload, scrambled):
    nodes = scrambled.nodes
    seeds = [1, 2]
    base = key(scrambled, nodes, workload, seeds, None)
    moved = [NodeProfile(n.name, n.cpu * 2, n.memory_mib, n.latency_ms) for n in nodes]
    assert key(scrambled, moved, workload, seeds, None) != base
    assert key(scrambled, nodes, workload, [1, 3], None) != base
    assert key(scrambled, nodes, workload, seeds, 4) != base
    assert key(scrambled, nodes, None, seeds, None) != base
    other = make_policy(scrambled.architecture, nodes, hidden=16)
    assert key(other, nodes, workload, seeds, None) != base
    assert key(scrambled, list(nodes), workload, seeds, None) == base


def test_the_cache_is_bounded_and_forgets_the_oldest():
    replays = Replays(limit=2)
    for k in "abc":
        replays.put(k, np.zeros(2), None)
    assert replays.get("a") is None and replays.get("c") is not None
    assert replays.get(None) is None
