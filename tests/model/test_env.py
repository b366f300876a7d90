import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

from metapolicy.baselines import greedy, make_random
from metapolicy.env import ENV_ID, PlacementEnv, register
from metapolicy.sim import PlacementSim


def test_env_passes_the_gymnasium_checker(nodes, workload):
    check_env(PlacementEnv(nodes, workload), skip_render_check=True)


def test_env_is_registered():
    register()
    env = gym.make(ENV_ID)
    obs, info = env.reset(seed=0)
    assert obs["action_mask"].all() and "action_mask" in info


def test_masked_nodes_are_zeroed_and_choosing_one_is_a_rejection(nodes, workload):
    available = [True] * len(nodes)
    available[2] = False
    sim = PlacementSim(nodes, workload, batch=2, available=available)
    obs = sim.reset(0)
    assert not obs.mask[:, 2].any() and np.all(obs.nodes[:, 2] == 0)
    _, reward, _, cost = sim.step(np.array([2, 2]))
    assert np.all(cost >= 50.0) and np.all(reward < 0)
    assert sim.used_cpu[:, 2].sum() == 0  # nothing was placed there


def test_task_stream_depends_on_the_seed_not_on_the_actions(nodes, workload):
    """Common random numbers: two agents on the same seeds face the same tasks."""
    streams = []
    for agent in (greedy, make_random(1)):
        sim = PlacementSim(nodes, workload, batch=3)
        obs, done, seen = sim.reset([5, 6, 7]), False, []
        while not done:
            seen.append(sim.current_task()[0].copy())
            obs, _, done, _ = sim.step(agent(sim, obs))
        streams.append(np.array(seen))
    np.testing.assert_array_equal(streams[0], streams[1])


def test_capacity_is_conserved(nodes, workload):
    """Used capacity never goes negative or above allocatable, and equals what is held."""
    sim = PlacementSim(nodes, workload, batch=4)
    obs, done = sim.reset(1), False
    agent = make_random(0)
    while not done:
        obs, _, done, _ = sim.step(agent(sim, obs))
        assert np.all(sim.used_cpu >= 0) and np.all(sim.used_cpu <= sim.cpu + 1e-9)
        np.testing.assert_allclose(sim.used_cpu, sim.held_cpu.sum(-1), atol=1e-9)
