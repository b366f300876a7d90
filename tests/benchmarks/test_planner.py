"""The model-predictive planner, the reference ceiling: it knows what it is told and nothing
else, plays by kube-scheduler's filter like every agent, and its margin keeps it on its rule."""

import numpy as np
import pytest

from benchmarks.planner import KNOWABLE, Planner
from metapolicy.baselines import HEURISTICS, best_fit
from metapolicy.cluster import make_cluster
from metapolicy.evaluation import episode_returns, evaluation_seeds
from metapolicy.sim import PlacementSim
from metapolicy.workload import WorkloadSpec

WORKLOAD = WorkloadSpec(episode_tasks=48)


@pytest.fixture
def nodes():
    return make_cluster(6, seed=3)


def busy(nodes, steps: int = 24) -> tuple[PlacementSim, object]:
    """Two episodes part-way through, with pods running."""
    sim = PlacementSim(nodes, WORKLOAD, batch=2)
    obs = sim.reset(evaluation_seeds(2))
    for _ in range(steps):
        obs, _, _, _ = sim.step(best_fit(sim, obs))
    return sim, obs


def test_the_planner_that_knows_the_future_beats_the_myopic_rule(nodes):
    seeds = evaluation_seeds(2)
    myopic = episode_returns(HEURISTICS["myopic"], nodes, WORKLOAD, seeds)
    planner = Planner(nodes, WORKLOAD, horizon=16, knows=KNOWABLE)
    planned = episode_returns(planner, nodes, WORKLOAD, seeds)
    assert planned.mean() > myopic.mean()
    drawn = episode_returns(Planner(nodes, WORKLOAD, horizon=16), nodes, WORKLOAD, seeds)
    assert np.isfinite(drawn).all()


def test_a_planner_knows_only_what_it_is_told(nodes):
    sim, _ = busy(nodes)
    running = sim.held_cpu > 0
    assert running.any()
    truth = sim.tasks
    i, h = sim.step_index, 8
    next_cpu = truth.cpu[:, i : i + h + 1]

    blind = Planner(nodes, WORKLOAD, horizon=h, samples=3)
    ends = blind._ends(sim).reshape(2, 3, *sim.end.shape[1:])
    assert not np.allclose(ends[:, 0][running], sim.end[running])
    assert not np.array_equal(blind._futures(sim).cpu[::3], next_cpu)

    timed = Planner(nodes, WORKLOAD, horizon=h, samples=3, knows=["durations"])
    assert np.array_equal(timed._ends(sim)[::3], sim.end)
    assert np.array_equal(timed._futures(sim).duration[::3, 0], truth.duration[:, i])

    ahead = Planner(nodes, WORKLOAD, horizon=h, samples=3, knows=["arrivals"])
    futures = ahead._futures(sim)
    assert np.array_equal(futures.cpu[::3], next_cpu)
    assert np.array_equal(futures.arrival[::3], truth.arrival[:, i : i + h + 1])
    assert not np.allclose(futures.duration[::3], truth.duration[:, i : i + h + 1])

    with pytest.raises(ValueError, match="can know arrivals, durations"):
        Planner(nodes, WORKLOAD, knows=["next week"])
    with pytest.raises(ValueError, match="unknown rollout rule"):
        Planner(nodes, WORKLOAD, rollout="oracle")


def test_the_planner_chooses_among_the_nodes_a_pod_fits(nodes):
    """Like every agent but random: deliberately rejecting a pod to keep its room free for a
    later one is a choice kube-scheduler's filter never offers."""
    planner = Planner(nodes, WORKLOAD, horizon=16, knows=KNOWABLE)
    sim = PlacementSim(nodes, WorkloadSpec(episode_tasks=48, load=1.2), batch=2)
    obs, done, crowded = sim.reset(evaluation_seeds(2)), False, 0
    while not done:
        actions = planner(sim, obs)
        assert obs.choices[np.arange(2), actions].all()
        crowded += (~obs.choices & obs.mask).any(-1).sum()
        obs, _, done, _ = sim.step(actions)
    assert crowded > 0  # some pod did not fit some node: the filter was put to the test


def test_a_wide_margin_keeps_the_rollout_rules_own_choice(nodes):
    sim, obs = busy(nodes, steps=4)
    careful = Planner(nodes, WORKLOAD, horizon=8, samples=4, rollout="best_fit", margin=1e9)
    for _ in range(16):
        expected = best_fit(sim, obs)
        assert np.array_equal(careful(sim, obs), expected)
        obs, _, _, _ = sim.step(expected)
