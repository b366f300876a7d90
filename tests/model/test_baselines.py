import numpy as np

from metapolicy.baselines import (
    HEURISTICS,
    balanced_allocation_scores,
    best_fit,
    greedy,
    kube_default,
    kube_default_scores,
    least_allocated_scores,
    least_loaded,
    make_random,
    most_allocated,
    most_allocated_scores,
    myopic,
)
from metapolicy.cluster import NodeProfile, make_cluster
from metapolicy.evaluation import episode_returns, evaluation_seeds


def test_baselines_order_on_a_fixed_scenario():
    """Every heuristic beats random; myopic beats greedy-by-latency (which crowds close nodes)."""
    nodes, seeds = make_cluster(8, seed=0), evaluation_seeds(16)
    mean = {
        name: episode_returns(agent, nodes, None, seeds).mean()
        for name, agent in {
            "random": make_random(0),
            "greedy": greedy,
            "least_loaded": least_loaded,
            "myopic": myopic,
        }.items()
    }
    assert mean["myopic"] > mean["greedy"] > mean["random"]
    assert mean["least_loaded"] > mean["random"]


def test_heuristics_never_pick_a_masked_node(nodes, workload):
    from metapolicy.sim import PlacementSim

    available = [i % 2 == 0 for i in range(len(nodes))]
    sim = PlacementSim(nodes, workload, batch=8, available=available)
    obs, done = sim.reset(3), False
    while not done:
        for agent in (*HEURISTICS.values(), make_random(0)):
            assert all(available[a] for a in agent(sim, obs))
        obs, _, done, _ = sim.step(myopic(sim, obs))


def test_kube_default_scores_follow_the_upstream_formulas():
    """4 cores / 8 GiB with 1 core / 2 GiB requested, a 1-core / 1 GiB pod arriving:
    LeastAllocated (200*100/400 = 50, 5120*100/8192 = 62.5 -> 62, mean 56) plus
    BalancedAllocation (fractions 0.5 and 0.375: std 0.0625, (1 - 0.0625)*100 -> 93)."""
    requested = (np.array([2.0]), np.array([3072.0]))
    allocatable = (np.array([4.0]), np.array([8192.0]))
    assert least_allocated_scores(requested, allocatable)[0] == 56
    assert balanced_allocation_scores(requested, allocatable)[0] == 93
    assert kube_default_scores(requested, allocatable)[0] == 149
    assert most_allocated_scores(requested, allocatable)[0] == 43  # (50 + 37) // 2
    over = (np.array([5.0]), np.array([3072.0]))
    assert least_allocated_scores(over, allocatable)[0] == 31  # cpu scores 0 when over


def test_kube_default_spreads_and_only_uses_nodes_the_pod_fits(nodes, workload):
    from metapolicy.sim import PlacementSim

    sim = PlacementSim(nodes, workload, batch=4)
    obs, done, picks = sim.reset(5), False, []
    while not done:
        action = kube_default(sim, obs)
        _, fits, _ = sim.placement()
        rows = np.arange(sim.batch)
        assert np.all(fits[rows, action] | ~fits.any(-1))
        picks.extend(action.tolist())
        obs, _, done, _ = sim.step(action)
    assert len(set(picks)) == len(nodes)  # least-allocated spreads over every node


def test_best_fit_fills_the_small_node_where_most_allocated_breaks_up_the_big_one():
    """A 16-core node with 8 cores taken and an empty 4-core node, a 2-core pod arriving:
    MostAllocated ranks by filled share (62% against 50%) and takes the big node; Best Fit
    leaves 6 cores there and 2 on the small node, so it takes the small one."""
    from metapolicy.sim import PlacementSim

    nodes = [
        NodeProfile("big", cpu=16.0, memory_mib=65536.0, latency_ms=1.0),
        NodeProfile("small", cpu=4.0, memory_mib=16384.0, latency_ms=1.0),
    ]
    sim = PlacementSim(nodes, None, batch=1)
    sim.reset(0)

    def arriving(cpu: float):
        """The observation of a `cpu`-core pod arriving at the state above."""
        sim.tasks.cpu[0, sim.step_index] = cpu
        sim._placement = None
        return sim._observe()

    sim.used_cpu[:] = [[8.0, 0.0]]
    sim.used_memory[:] = [[32768.0, 0.0]]
    sim.tasks.memory[0, sim.step_index] = 4096.0
    obs = arriving(2.0)
    assert most_allocated(sim, obs).tolist() == [0]
    assert best_fit(sim, obs).tolist() == [1]
    obs = arriving(6.0)  # fits the big node only
    assert best_fit(sim, obs).tolist() == [0]
