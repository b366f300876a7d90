"""Sub-clusters: a big node set played a few nodes per episode (metapolicy.subclusters)."""

import numpy as np
import pytest
import torch

from metapolicy import ppo
from metapolicy.adapt import AdaptationSettings, validate, zero_shot
from metapolicy.baselines import HEURISTICS, make_random
from metapolicy.cluster import make_cluster, resize_cluster
from metapolicy.evaluation import (
    episode_returns,
    episode_stats,
    episode_stats_together,
    evaluation_seeds,
)
from metapolicy.features import NODE_FEATURES
from metapolicy.imitation import ImitationSettings, imitate
from metapolicy.policy import make_policy
from metapolicy.ppo import PPOSettings, train
from metapolicy.sim import PlacementSim
from metapolicy.subclusters import SubClusters, sampled
from metapolicy.training import TrainingSettings, train_initial


@pytest.fixture
def big():
    return make_cluster(120, seed=5)


def kinds_of(sub: SubClusters, row: np.ndarray) -> set[int]:
    return {k for k, kind in enumerate(sub.kinds) if np.isin(kind, row).any()}


def test_every_draw_holds_every_kind_in_proportion(big):
    sub = SubClusters(big, 16)
    assert 1 < len(sub.kinds) <= 8 and sub.quota.sum() == 16
    sizes = np.array([len(kind) for kind in sub.kinds])
    np.testing.assert_allclose(sub.quota, 16 * sizes / sizes.sum(), atol=1.0)
    for rows in (sub.for_seeds(range(40)), sub.in_turn(0, 40)):
        for row in rows:
            assert len(set(row)) == 16 and list(row) == sorted(row)
            assert kinds_of(sub, row) == set(range(len(sub.kinds)))
    # the biggest node size is in every sub-cluster: big tasks have a home in each
    biggest = max(n.cpu for n in big)
    assert all(max(big[i].cpu for i in row) == biggest for row in sub.for_seeds(range(40)))


def test_training_draws_see_every_node_before_any_twice(big):
    sub = SubClusters(big, 16)
    turns = int(max(np.ceil(len(kind) / q) for kind, q in zip(sub.kinds, sub.quota, strict=True)))
    seen = np.concatenate(sub.in_turn(0, turns))
    assert set(seen) == set(range(len(big)))
    for kind, q in zip(
        sub.kinds, sub.quota, strict=True
    ):  # within a kind: no repeat before full coverage
        whole = len(kind) // q
        drawn = np.concatenate(sub.in_turn(0, whole))
        assert np.unique(drawn[np.isin(drawn, kind)]).size == whole * q


def test_the_seed_picks_the_sub_cluster(big):
    sub = SubClusters(big, 16)
    np.testing.assert_array_equal(sub.for_seeds([3, 4]), SubClusters(big, 16).for_seeds([3, 4]))
    assert not np.array_equal(*sub.for_seeds([3, 4]))
    assert SubClusters(big, 16, salt=1).for_seeds([3]).tolist() == sub.for_seeds([3]).tolist()


def test_small_clusters_are_played_whole(big):
    nodes = make_cluster(20)
    assert sampled(nodes, 32) == nodes and sampled(nodes, None) == nodes
    assert isinstance(sampled(big, 32), SubClusters)
    assert sampled(sampled(big, 32), 0) == big
    with pytest.raises(ValueError, match="more"):
        SubClusters(nodes, 20)


def test_simulator_plays_each_episode_on_its_own_sub_cluster(big, workload):
    sub = SubClusters(big, 16)
    sim = PlacementSim(sub, workload, batch=4)
    obs = sim.reset([1, 2, 3, 4])
    assert obs.nodes.shape == (4, 16, NODE_FEATURES)
    np.testing.assert_array_equal(obs.members, sub.for_seeds([1, 2, 3, 4]))
    assert sim.cpu.shape == (4, 16)
    np.testing.assert_array_equal(sim.cpu, np.array([n.cpu for n in big])[obs.members])
    # every agent plays on it; a heuristic's returns depend only on the seeds
    for make in [lambda: make_random(0), *(lambda h=h: h for h in HEURISTICS.values())]:
        first = episode_returns(make(), sub, workload, [7, 8])
        np.testing.assert_array_equal(first, episode_returns(make(), sub, workload, [7, 8]))


def test_a_sub_cluster_is_scored_as_if_only_its_nodes_existed(big, workload):
    """Env-ordered inputs with slot ids give the logits the slot-ordered view gives on a
    cluster of just those nodes (the other slots masked, invisible to the pooling)."""
    policy = make_policy("node-set", big, hidden=16)
    with torch.no_grad():
        policy.slot_table.normal_(0, 0.5)
    sub = SubClusters(big, 16)
    sim = PlacementSim(sub, workload, batch=3)
    obs = sim.reset([11, 12, 13])
    logits, _ = policy(*policy.inputs(obs, sim.names))
    for row in range(3):
        alone = [big[i] for i in obs.members[row]]
        small = PlacementSim(alone, workload, batch=1)
        small.reset([sim.seeds[row]])
        small_obs = small._observe()
        expected, _ = policy(*policy.view(small_obs, small.names))
        slots = torch.from_numpy(policy.env_slots(small.names))
        torch.testing.assert_close(logits[row], expected[0, slots])


def test_slot_mlp_cannot_play_sub_clusters(big, workload):
    policy = make_policy("slot-mlp", big, hidden=16)
    sim = PlacementSim(SubClusters(big, 16), workload, batch=2)
    with pytest.raises(ValueError, match="sub-clusters"):
        policy.inputs(sim.reset(1), sim.names)


def test_ppo_buffers_hold_the_sub_cluster_and_every_slot_learns(big, workload, monkeypatch):
    policy = make_policy("node-set", big, hidden=16)
    before = policy.slot_table.detach().clone()
    shapes = []
    real_update = ppo._update

    def spy(policy, optimizer, params, inputs, data, s, generator):
        shapes.append([tuple(x.shape) for x in inputs])
        real_update(policy, optimizer, params, inputs, data, s, generator)

    monkeypatch.setattr(ppo, "_update", spy)
    sub = SubClusters(big, 16)
    turns = int(max(np.ceil(len(k) / q) for k, q in zip(sub.kinds, sub.quota, strict=True)))
    episodes = -(-turns // 2)  # 8 envs in groups of 4: two sub-clusters per episode
    settings = PPOSettings(steps=8 * 64 * episodes, envs=8, epochs=1, minibatches=2, seed=1)
    train(policy, sub, workload, settings)
    batch = 8 * 64
    assert shapes[0] == [
        (batch, 16, NODE_FEATURES),
        (batch, shapes[0][1][1]),
        (batch, 16),
        (batch, 16),
    ]
    moved = (policy.slot_table.detach() != before).any(-1)
    assert bool(moved.all()), f"{int((~moved).sum())} slots never trained"


def test_small_cluster_training_is_unchanged_by_the_sub_cluster_setting(workload):
    nodes = make_cluster(6, seed=3)
    results = [
        train_initial(
            nodes,
            TrainingSettings(
                steps=1024,
                hidden=16,
                subcluster=size,
                workload=workload,
                select_episodes=2,
                episodes=2,
                imitate_below=0,
            ),
        )
        for size in (32, 0)
    ]
    for a, b in zip(
        results[0].policy.state_dict().values(),
        results[1].policy.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)
    assert results[0].score == results[1].score


def test_training_and_adaptation_run_on_sub_clusters(big, workload):
    settings = TrainingSettings(
        steps=1024, hidden=16, subcluster=16, max_nodes=200, workload=workload,
        select_episodes=2, episodes=2, imitate_below=0,
    )  # fmt: skip
    result = train_initial(big, settings)
    assert np.isfinite(result.score)
    grown = resize_cluster(big, 3, seed=9)
    stage = zero_shot(
        result.policy,
        grown,
        AdaptationSettings(
            budget_steps=0, episodes=4, max_nodes=200, subcluster=16, workload=workload
        ),
    )
    assert stage.record.new_nodes == 123 and stage.validation.candidate_new.shape == (4,)


def test_validation_pairs_candidate_and_masked_backup_on_the_same_sub_clusters(big, workload):
    """A candidate that is the backup (no node changed) scores exactly as the backup masked."""
    backup = make_policy("node-set", big, hidden=16)
    v = validate(backup, backup, workload, episodes=4, subcluster=16)
    np.testing.assert_array_equal(v.candidate_new, v.backup_masked)
    np.testing.assert_array_equal(v.candidate_new, v.backup_old)
    assert v.candidate_new.shape == (4,)
    seeds = evaluation_seeds(4)
    np.testing.assert_array_equal(
        v.candidate_new, episode_returns(backup.agent(), SubClusters(big, 16), workload, seeds)
    )


@pytest.mark.parametrize("size", [None, 16])
def test_agents_played_together_play_exactly_as_alone(big, workload, size):
    """The heuristics' rows get no observation; the policy and random, played after them in
    the dict, get theirs."""
    view = sampled(big, size)
    seeds = evaluation_seeds(3)
    policy = make_policy("node-set", big, 16, seed=2)
    agents = {**HEURISTICS, "policy": policy.agent(), "random": make_random(seeds[0])}
    together = episode_stats_together(agents, view, workload, seeds, whole=HEURISTICS)
    assert list(together) == list(agents)
    agents["random"] = make_random(seeds[0])  # it draws as it plays: a fresh one plays alone
    for name, agent in agents.items():
        alone = episode_stats(agent, view, workload, seeds)
        np.testing.assert_array_equal(together[name].returns, alone.returns)
        np.testing.assert_array_equal(together[name].reject_rate, alone.reject_rate)


@pytest.mark.parametrize("size", [None, 16])
def test_an_observation_of_the_first_rows_is_those_rows_of_the_whole_one(big, workload, size):
    view = sampled(big, size)
    whole = PlacementSim(view, workload, batch=6)
    first = PlacementSim(view, workload, batch=6, observation_rows=2)
    obs_whole, obs_first = whole.reset(4), first.reset(4)
    for _ in range(40):  # long enough for pods to hold cpu, end, and slots to grow
        assert obs_first.nodes.shape[0] == 2
        np.testing.assert_array_equal(obs_first.nodes, obs_whole.nodes[:2])
        np.testing.assert_array_equal(obs_first.task, obs_whole.task[:2])
        np.testing.assert_array_equal(obs_first.mask, obs_whole.mask[:2])
        if size is not None:
            np.testing.assert_array_equal(obs_first.members, obs_whole.members[:2])
        np.testing.assert_array_equal(whole.choices(), obs_whole.choices)
        actions = HEURISTICS["best_fit"](whole, obs_whole)
        obs_whole = whole.step(actions)[0]
        obs_first = first.step(actions)[0]


def test_imitation_learns_the_teacher_on_sub_clusters(big, workload):
    policy = make_policy("node-set", big, hidden=16)
    sub = SubClusters(big, 16)
    teacher = HEURISTICS["least_loaded"]

    def agreement() -> float:
        sim = PlacementSim(sub, workload, batch=8)
        obs, done, same = sim.reset(list(range(50, 58))), False, []
        while not done:
            label = teacher(sim, obs)
            same.append(policy.act(obs, sim.names) == label)
            obs, _, done, _ = sim.step(label)
        return float(np.mean(same))

    before = agreement()
    settings = ImitationSettings(teacher="least_loaded", steps=8192, envs=8, epochs=8)
    result = imitate(policy, sub, workload, settings)
    assert np.isfinite(result.loss) and agreement() > before + 0.1
