"""Pod slots grow on demand, and a node still holds at most `slots_per_node` pods."""

import numpy as np

from metapolicy.baselines import greedy
from metapolicy.cluster import make_cluster
from metapolicy.sim import PlacementSim
from metapolicy.workload import TaskClass, WorkloadSpec

# Many tiny long tasks: the closest node fills up by pod count long before by cpu.
TINY = WorkloadSpec(
    episode_tasks=400,
    load=1.5,
    task_classes=(TaskClass("t", 1.0, (0.01, 0.05), (10, 20), (50, 100)),),
)


def test_slots_grow_to_the_pod_limit_and_no_further():
    sim = PlacementSim(make_cluster(6, seed=1), TINY, batch=4, slots_per_node=40)
    obs = sim.reset(1)
    assert sim.held_cpu.shape[-1] == 16
    full_seen, done = False, False
    while not done:
        full = ~sim.scheduler_view()[0].has_room
        full_seen |= bool(full.any())
        pods = (sim.held_cpu > 0).sum(-1)
        np.testing.assert_array_equal(full, pods == 40)
        _, fits, _ = sim.placement()
        assert not (fits & full).any()  # a full node fits nothing
        obs, _, done, _ = sim.step(greedy(sim, obs))
    assert full_seen and sim.held_cpu.shape[-1] == 40
    assert ((sim.held_cpu > 0).sum(-1) <= 40).all()


def test_a_new_episode_starts_small_again():
    sim = PlacementSim(make_cluster(6, seed=1), TINY, batch=2)
    obs, done = sim.reset(3), False
    while not done:
        obs, _, done, _ = sim.step(greedy(sim, obs))
    assert sim.held_cpu.shape[-1] > 16
    sim.reset(4)
    assert sim.held_cpu.shape[-1] == 16 and sim.scheduler_view()[0].has_room.all()
