from metapolicy.baselines import greedy, least_loaded, make_random, myopic
from metapolicy.cluster import make_cluster
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
        for agent in (greedy, least_loaded, myopic, make_random(0)):
            assert all(available[a] for a in agent(sim, obs))
        obs, _, done, _ = sim.step(myopic(sim, obs))
