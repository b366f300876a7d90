"""The observation holds only what a scheduler knows when a pod is scheduled."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from metapolicy import features
from metapolicy.baselines import myopic
from metapolicy.cluster import make_cluster
from metapolicy.features import (
    ATTRIBUTE_FEATURES,
    NODE_FEATURE_NAMES,
    NODE_FEATURES,
    PRESSURE_WINDOW,
    TASK_FEATURE_NAMES,
    TASK_FEATURES,
    PodAttributes,
)
from metapolicy.policy import make_policy
from metapolicy.sim import PlacementSim


def busy_sim(steps: int = 120, batch: int = 4) -> PlacementSim:
    """A simulator some way into its episodes, with pods of several ages running."""
    sim = PlacementSim(make_cluster(6), batch=batch)
    obs = sim.reset(7)
    for _ in range(steps):
        obs, *_ = sim.step(myopic(sim, obs))
    return sim


def test_names_match_the_feature_counts():
    assert len(NODE_FEATURE_NAMES) == NODE_FEATURES
    assert len(TASK_FEATURE_NAMES) == TASK_FEATURES
    assert len(PodAttributes().vector()) == ATTRIBUTE_FEATURES
    names = set(NODE_FEATURE_NAMES + TASK_FEATURE_NAMES)
    assert not names & {"duration", "soon", "end", "step_index", "progress", "burst"}


@pytest.mark.parametrize("architecture", ["node-set", "slot-mlp"])
def test_the_policy_cannot_see_the_future(architecture):
    """Change the true durations of the current and coming tasks and the true end times of the
    running ones, keep everything a scheduler sees: the observation and the logits stay."""
    sim = busy_sim()
    assert (sim.held_cpu > 0).sum() > 10, "the test needs running pods"
    before = sim._observe()
    future = copy.deepcopy(sim)
    rng = np.random.default_rng(3)
    running = future.held_cpu > 0
    future.end[running] += rng.uniform(1, 500, running.sum())
    future.tasks.duration[:, sim.step_index :] *= rng.uniform(
        0.1, 50, future.tasks.duration[:, sim.step_index :].shape
    )
    future._placement = None
    after = future._observe()
    np.testing.assert_array_equal(before.nodes, after.nodes)
    np.testing.assert_array_equal(before.task, after.task)
    policy = make_policy(architecture, sim.nodes, hidden=16, seed=1)
    with torch.no_grad():
        logits_before, _ = policy(*policy.view(before, sim.names))
        logits_after, _ = policy(*policy.view(after, sim.names))
    torch.testing.assert_close(logits_before, logits_after, rtol=0, atol=0)


def test_the_future_still_drives_the_dynamics():
    """The same check must be able to fail: true durations do change later states."""
    sim = busy_sim(steps=10)
    other = copy.deepcopy(sim)
    other.tasks.duration[:] *= 20
    for _ in range(60):
        sim.step(myopic(sim, sim._observe()))
        other.step(myopic(other, other._observe()))
    assert not np.array_equal(sim._observe().nodes, other._observe().nodes)


def test_per_node_pod_lists_give_the_same_observation_as_padded_slots():
    """The server passes each node's pods as a list; the simulator its padded slots."""
    sim = busy_sim(batch=1)
    state, pods = sim.scheduler_view()
    held = sim.held_cpu[0] > 0
    node_of_pod = np.nonzero(held)[0]
    ragged = copy.copy(state)
    order = np.random.default_rng(0).permutation(len(node_of_pod))  # any pod order
    ragged.pod_node = node_of_pod[order]
    ragged.pod_cpu = sim.held_cpu[0][held][order]
    ragged.pod_start = sim.start[0][held][order]
    ragged.pod_qos = sim.held_qos[0][held][order]
    a = features.observe(state, pods)
    b = features.observe(ragged, pods)
    np.testing.assert_allclose(a.nodes, b.nodes, atol=1e-6)
    np.testing.assert_array_equal(a.task, b.task)


def test_pod_summary_counts_cpu_per_qos_class_and_weights_ages_by_cpu():
    state = features.ClusterState(
        cpu=np.array([4.0, 8.0]),
        memory=np.array([1024.0, 1024.0]),
        latency=np.array([1.0, 1.0]),
        available=np.array([True, True]),
        requested_cpu=np.array([[3.0, 0.0]]),
        requested_memory=np.zeros((1, 2)),
        has_room=np.ones((1, 2), bool),
        pod_node=np.array([0, 0]),
        pod_cpu=np.array([1.0, 2.0]),
        pod_start=np.array([100.0 - np.expm1(1.0), 100.0 - np.expm1(4.0)]),
        pod_qos=np.array([0, 2]),
    )
    summary = features.pod_summary(state, np.array([100.0]))
    np.testing.assert_allclose(summary[0, 0], [0.25, 0.0, 0.5, (1 * 1 + 2 * 4) / 3 / 10])
    np.testing.assert_array_equal(summary[0, 1], 0.0)


def test_arrival_pressure_is_zero_without_history_and_positive_in_a_burst():
    empty = np.full((1, PRESSURE_WINDOW), np.nan)
    empty[0, -1] = 5.0
    assert features.arrival_pressure(empty)[0] == 0.0
    steady = np.arange(PRESSURE_WINDOW, dtype=float)[None]
    assert features.arrival_pressure(steady)[0] == pytest.approx(0.0, abs=1e-9)
    burst = steady.copy()
    burst[0, -17:] = burst[0, -17] + np.arange(17) * 0.1  # the last 16 gaps ten times shorter
    assert features.arrival_pressure(burst)[0] > 0.5


def test_pod_attributes_encode_and_refuse_unknown_values():
    vector = PodAttributes(qos="BestEffort", owner="batch", gpu=2, duration_hint_s=60).vector()
    named = dict(zip(features.ATTRIBUTE_NAMES, vector, strict=True))
    assert named["qos_BestEffort"] == 1 and named["owner_batch"] == 1
    assert named["gpu"] == pytest.approx(0.25)
    assert named["has_duration_hint"] == 1
    assert named["log_duration_hint"] == pytest.approx(np.log1p(60) / 10)
    assert PodAttributes().vector()[features.ATTRIBUTE_NAMES.index("has_duration_hint")] == 0
    with pytest.raises(ValueError, match="qos"):
        PodAttributes(qos="Gold")
    with pytest.raises(ValueError, match="owner"):
        PodAttributes(owner="Deployment")
    assert features.owner_group("Job") == "batch"
    assert features.owner_group("ReplicaSet") == "service"
    assert features.owner_group(None) == "other"
