import numpy as np
import pytest
import torch

from metapolicy.cluster import NodeProfile, make_cluster, resize_cluster
from metapolicy.features import NODE_FEATURES
from metapolicy.policy import SlotPolicy
from metapolicy.sim import PlacementSim
from metapolicy.strategies import (
    STRATEGIES,
    attention_mix,
    choose_strategy,
    escalate,
    interpolation_mix,
    resize,
)


def env_probs(policy: SlotPolicy, obs, names) -> torch.Tensor:
    logits, _ = policy(*policy.view(obs, names))
    index, present = policy._slot_index(names)
    probs = torch.zeros(obs.mask.shape)
    probs[:, torch.as_tensor(index[present])] = torch.softmax(logits, -1)[
        :, torch.as_tensor(present)
    ]
    return probs


CHANGES = {
    "grow": lambda nodes: resize_cluster(nodes, 3),
    "shrink-middle": lambda nodes: resize_cluster(nodes, -2, remove=["node-02", "node-03"]),
    "replace": lambda nodes: [n for n in nodes if n.name != "node-01"] + make_cluster(9)[7:],
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("change", CHANGES)
def test_new_slots_masked_gives_the_old_distribution(scrambled, workload, strategy, change):
    """The masked-equivalence property: resizing alone never changes a decision among old nodes."""
    policy = scrambled
    new_nodes = CHANGES[change](policy.nodes)
    resized = resize(policy, new_nodes, strategy)
    old_names = set(policy.slot_names)
    sim = PlacementSim(
        new_nodes, workload, batch=16, available=[n.name in old_names for n in new_nodes]
    )
    obs = sim.reset(4)
    for _ in range(10):
        torch.testing.assert_close(
            env_probs(resized, obs, sim.names), env_probs(policy, obs, sim.names)
        )
        obs, *_ = sim.step(policy.act(obs, sim.names))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_removing_a_middle_node_removes_exactly_its_slot(scrambled, strategy):
    policy = scrambled
    gone = policy.slot_names.index("node-02")
    survivors = [n for n in policy.nodes if n.name != "node-02"]
    resized = resize(policy, survivors, strategy)
    assert resized.slot_names == [n.name for n in survivors]
    old, new = policy.state_dict(), resized.state_dict()
    keep = [i for i in range(policy.size) if i != gone]
    if policy.architecture == "node-set":
        assert torch.equal(new["slot_table"], old["slot_table"][keep])
    else:
        columns = np.concatenate(
            [np.arange(i * NODE_FEATURES, (i + 1) * NODE_FEATURES) for i in keep]
        )
        task_columns = np.arange(policy.size * NODE_FEATURES, old["first.weight"].shape[1])
        expected = old["first.weight"][:, np.concatenate([columns, task_columns])]
        assert torch.equal(new["first.weight"], expected)
        assert torch.equal(new["logits.weight"], old["logits.weight"][keep])
        assert torch.equal(new["logits.bias"], old["logits.bias"][keep])
    shared = [
        k for k in old if k not in {"slot_table", "first.weight", "logits.weight", "logits.bias"}
    ]
    assert all(torch.equal(old[k], new[k]) for k in shared)


def test_zero_padding_starts_new_slots_neutral(scrambled):
    policy = scrambled
    resized = resize(policy, resize_cluster(policy.nodes, 2), "zero_padding")
    state = resized.state_dict()
    if policy.architecture == "node-set":
        assert torch.count_nonzero(state["slot_table"][-2:]) == 0
    else:
        assert (
            torch.count_nonzero(
                state["first.weight"][:, policy.size * NODE_FEATURES :][:, : 2 * NODE_FEATURES]
            )
            == 0
        )
        mean_row = policy.state_dict()["logits.weight"].mean(0)
        torch.testing.assert_close(state["logits.weight"][-1], mean_row)


def node(name: str, cpu: float, memory: float, latency: float = 5.0) -> NodeProfile:
    return NodeProfile(name, cpu, memory, latency)


def test_interpolation_follows_capacity_order():
    old = [node("small", 4, 16384), node("big", 16, 65536)]
    mix = interpolation_mix(old, [node("mid", 10, 40960), node("huge", 64, 262144)])
    # "mid" sits exactly halfway between small (0.5) and big (2.0) on cpu/16 + mem/64Gi.
    np.testing.assert_allclose(mix[0], [0.5, 0.5])
    np.testing.assert_allclose(mix[1], [0.0, 1.0])  # beyond the end: copy the nearest


def test_attention_prefers_the_most_similar_profile():
    old = [node("small", 4, 16384, 15), node("big", 16, 65536, 3)]
    mix = attention_mix(old, [node("big-2", 16, 65536, 3.5)])
    assert mix[0, 1] > 0.95 and np.isclose(mix.sum(), 1.0)


@pytest.mark.parametrize(
    ("added", "removed", "expected"),
    [
        (1, 0, "zero_padding"),
        (0, 2, "zero_padding"),
        (4, 0, "weight_interpolation"),
        (0, 5, "weight_interpolation"),
        (8, 0, "knowledge_distillation"),
        (6, 4, "knowledge_distillation"),
        (12, 0, "attention_based"),
    ],
)
def test_choose_strategy_follows_the_table(added, removed, expected):
    old = [f"n{i}" for i in range(10)]
    new = old[removed:] + [f"m{i}" for i in range(added)]
    assert choose_strategy(old, new) == expected
    assert choose_strategy(old, new, "attention_based") == "attention_based"


def test_escalation_ends_at_distillation():
    chain = ["zero_padding"]
    for _ in range(4):
        chain.append(escalate(chain[-1]))
    assert (
        chain
        == ["zero_padding", "weight_interpolation", "attention_based"]
        + ["knowledge_distillation"] * 2
    )
