"""The extender over HTTP: which policy answers, what it answers, and failing open."""

import asyncio
import copy
import json

import numpy as np
import pytest

from metapolicy.record import Outcome
from metapolicy.store import WEIGHTS_FILE
from metapolicy_operator.serving import placer as placer_module
from metapolicy_operator.serving.metrics import FALLBACK_REASONS
from metapolicy_operator.serving.scores import RUNNER_UP, heuristic_scores
from tests.serving.conftest import made_by_operator, node_object, pod_object, untrained, wait_for

NODES = [
    node_object("a", latency_ms=15),
    node_object("b", latency_ms=2),
    node_object("c", latency_ms=15),
]
NAMES = ["a", "b", "c"]


async def served(harness, architecture="node-set", name="p", nodes=NODES, **policy_kwargs):
    harness.add_nodes(*nodes)
    harness.add_policy(name, **policy_kwargs)
    version = harness.promote(name, untrained(architecture, nodes))
    await harness.serving(name, version)
    return version


@pytest.mark.parametrize("architecture", ["node-set", "slot-mlp"])
async def test_the_policys_choice_gets_10(harness, architecture):
    version = await served(harness, architecture)
    scores, headers = await harness.prioritize(pod_object("web-1"), NAMES)
    # An untrained policy's choice is the cheapest placement: the 2 ms node.
    assert scores["b"] == 10
    assert scores["a"] <= RUNNER_UP and scores["c"] <= RUNNER_UP
    assert headers["X-Metapolicy-Version"] == str(version)
    assert headers["X-Metapolicy-Policy"] == "default/p"
    assert harness.sample("metapolicy_serve_decisions_total", policy="default/p", mode="active")
    assert (
        harness.sample("metapolicy_serve_requests_total", verb="prioritize", outcome="policy") == 1
    )


async def test_the_choice_follows_the_cluster_state(harness):
    await served(harness)
    busy = pod_object("hog", cpu="3900m", node="b", phase="Running")
    harness.add_pods(busy)  # b is nearly full: queueing there now costs more than 13 ms
    scores, _ = await harness.prioritize(pod_object("web-1"), NAMES)
    assert scores["b"] < 10 and max(scores["a"], scores["c"]) == 10


async def test_pods_of_no_policy_get_neutral_scores(harness):
    await served(harness)
    scores, headers = await harness.prioritize(pod_object("other", labels={"app": "x"}), NAMES)
    assert scores == {"a": 0, "b": 0, "c": 0}
    assert headers["X-Metapolicy-Outcome"] == "neutral"


async def test_a_pod_of_two_policies_gets_neutral_scores_and_a_fallback(harness):
    await served(harness)
    harness.add_policy("q")
    scores, _ = await harness.prioritize(pod_object("web-1"), NAMES)
    assert set(scores.values()) == {0}
    assert (
        harness.sample("metapolicy_serve_fallbacks_total", policy="", reason="ambiguous_policy")
        == 1
    )


async def test_namespaces_and_off_mode(harness):
    await served(harness, namespaces=["shop"])
    scores, _ = await harness.prioritize(pod_object("web-1"), NAMES)  # in "default"
    assert set(scores.values()) == {0}
    scores, _ = await harness.prioritize(pod_object("web-2", namespace="shop"), NAMES)
    assert scores["b"] == 10
    harness.add_policy("p", namespaces=["shop"], mode="off")
    scores, _ = await harness.prioritize(pod_object("web-3", namespace="shop"), NAMES)
    assert set(scores.values()) == {0}


# ----- failing open ------------------------------------------------------------------------------
def expected_heuristic(harness, names, pod_millicores=500, pod_bytes=512 * 2**20):
    infos = [harness.cache.nodes.get(n) for n in names]
    allocatable = (
        np.array([i.allocatable_millicores if i else 0 for i in infos]),
        np.array([i.allocatable_bytes if i else 0 for i in infos]),
    )
    used = np.array([harness.cache.requested(n)[:2] for n in names], float)
    scores = heuristic_scores(allocatable, (used[:, 0], used[:, 1]), (pod_millicores, pod_bytes))
    return dict(zip(names, scores.tolist(), strict=True))


async def no_active_version(harness):
    harness.add_nodes(*NODES)
    harness.add_policy("p")
    return pod_object("web-1"), NAMES, {}


async def checkpoint_unreadable(harness):
    harness.add_nodes(*NODES)
    version = harness.promote("p", untrained("node-set", NODES))
    weights = harness.store("p").root / f"v{version:06d}" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit: the sha256 no longer matches
    weights.write_bytes(bytes(data))
    harness.add_policy("p")
    policy = "default/p"
    await wait_for(
        lambda: harness.registry.policies[policy].problem == "checkpoint_unreadable",
        what="the corrupt version is refused",
    )
    return pod_object("web-1"), NAMES, {}


async def unparsable_pod(harness):
    await served(harness)
    return pod_object("web-1", cpu="lots"), NAMES, {"pod_millicores": 0, "pod_bytes": 0}


async def unparsable_node(harness):
    await served(harness)
    return pod_object("web-1"), [*NAMES, "ghost"], {}


async def internal_error(harness, monkeypatch):
    await served(harness)

    def broken(*_):
        raise RuntimeError("a bug")

    monkeypatch.setattr(placer_module, "evaluate", broken)
    return pod_object("web-1"), NAMES, {}


async def over_budget(harness):
    await served(harness)
    harness.placer.budget_s = 0.0
    return pod_object("web-1"), NAMES, {}


FAILURES = {
    "no_active_version": no_active_version,
    "checkpoint_unreadable": checkpoint_unreadable,
    "unparsable_pod": unparsable_pod,
    "unparsable_node": unparsable_node,
    "internal_error": internal_error,
    "over_budget": over_budget,
}


@pytest.mark.parametrize("reason", sorted(FAILURES))
async def test_every_failure_answers_200_with_the_default_rule(harness, monkeypatch, reason):
    setup = FAILURES[reason]
    args = (harness, monkeypatch) if reason == "internal_error" else (harness,)
    pod, names, demand = await setup(*args)
    harness.add_pods(pod_object("hog", cpu="3", memory="1Gi", node="a", phase="Running"))
    scores, headers = await harness.prioritize(pod, names)
    assert scores == expected_heuristic(harness, names, **demand)
    assert scores["b"] > scores["a"]  # the emptier node, as the default scheduler prefers
    assert headers["X-Metapolicy-Outcome"] == "fallback"
    assert harness.sample("metapolicy_serve_fallbacks_total", policy="default/p", reason=reason)
    others = [r for r in FALLBACK_REASONS if r != reason]
    assert not any(
        harness.sample("metapolicy_serve_fallbacks_total", policy="default/p", reason=r)
        for r in others
    )


async def test_malformed_requests_get_400_and_the_server_answers_after(harness):
    await served(harness)
    for verb in ("prioritize", "filter"):
        status, body, _ = await harness.call(verb, b'{"Pod": ')
        assert status == 400 and "not JSON" in body["Error"]
        assert (
            harness.sample("metapolicy_serve_requests_total", verb=verb, outcome="bad_request") == 1
        )
    scores, _ = await harness.prioritize(pod_object("web-1"), NAMES)
    assert scores["b"] == 10


async def test_readable_candidates_with_an_unreadable_pod_get_an_answer_not_an_error(harness):
    await served(harness)
    body = json.dumps({"Pod": "not a pod", "NodeNames": NAMES}).encode()
    status, scores, _ = await harness.call("prioritize", body)
    assert status == 200 and [s["Host"] for s in scores] == NAMES
    assert {s["Score"] for s in scores} == {0}  # neutral: the default plugins decide
    status, result, _ = await harness.call("filter", body)
    assert status == 200 and result["NodeNames"] == NAMES and not result["Error"]
    assert harness.sample("metapolicy_serve_fallbacks_total", policy="", reason="unparsable_pod")


# ----- filter ------------------------------------------------------------------------------------
async def test_filter_removes_only_the_nodes_the_pod_does_not_fit(harness):
    small = node_object("small", cpu=1, max_pods=2)
    full = node_object("crowded", cpu=8, max_pods=1)
    harness.add_nodes(*NODES, small, full)
    harness.add_policy("p")
    harness.add_pods(
        pod_object("hog", cpu="3", memory="7Gi", node="a", phase="Running"),
        pod_object("tiny", cpu="10m", memory="1Mi", node="crowded", phase="Running"),
    )
    pod = pod_object("web-1", cpu="1500m", memory="2Gi")
    names = ["a", "b", "small", "crowded", "c", "unknown"]
    status, body, _ = await harness.call("filter", {"Pod": pod, "Nodes": None, "NodeNames": names})
    assert status == 200
    assert body["NodeNames"] == ["b", "c", "unknown"] and body["Nodes"] is None
    assert set(body["FailedNodes"]) == {"a", "small", "crowded"}
    assert body["FailedNodes"]["a"].startswith("Insufficient cpu: 3000m of 4000m")
    assert body["FailedNodes"]["small"].startswith("Insufficient cpu")
    assert body["FailedNodes"]["crowded"].startswith("Too many pods: 1 of 1")
    assert body["FailedAndUnresolvableNodes"] == {} and body["Error"] == ""

    memory = pod_object("web-2", cpu="100m", memory="2Gi")
    _, body, _ = await harness.call("filter", {"Pod": memory, "Nodes": None, "NodeNames": ["a"]})
    assert body["FailedNodes"]["a"].startswith("Insufficient memory")


async def test_filter_passes_everything_for_other_pods(harness):
    harness.add_nodes(*NODES)
    harness.add_policy("p", mode="shadow")
    harness.add_pods(pod_object("hog", cpu="4", node="a", phase="Running"))
    for pod in (pod_object("x", labels={"app": "x"}), pod_object("web-1")):  # none; shadow
        _, body, _ = await harness.call("filter", {"Pod": pod, "Nodes": None, "NodeNames": NAMES})
        assert body["NodeNames"] == NAMES and body["FailedNodes"] == {}


async def test_full_node_objects_are_read_from_the_request(harness):
    await served(harness)
    late = node_object("late", latency_ms=1)  # not in the cache yet: the request has it
    objects = [*NODES, late]
    args = {"Pod": pod_object("web-1"), "Nodes": {"items": objects}, "NodeNames": None}
    status, body, _ = await harness.call("prioritize", args)
    assert status == 200
    scores = {e["Host"]: e["Score"] for e in body}
    assert scores["late"] == 10  # node-set scores it from its features
    harness.add_pods(pod_object("hog", cpu="3900m", node="b", phase="Running"))
    args["Pod"] = pod_object("web-2", cpu="1")
    _, body, _ = await harness.call("filter", args)
    assert [n["metadata"]["name"] for n in body["Nodes"]["items"]] == ["a", "c", "late"]
    assert body["NodeNames"] is None and list(body["FailedNodes"]) == ["b"]


# ----- nodes that joined after the last adaptation -----------------------------------------------
async def test_node_set_scores_a_new_node_from_its_features(harness):
    await served(harness)
    harness.add_nodes(node_object("new", latency_ms=1))
    scores, headers = await harness.prioritize(pod_object("web-1"), [*NAMES, "new"])
    assert scores["new"] == 10 and scores["b"] <= RUNNER_UP
    assert headers["X-Metapolicy-Outcome"] == "policy"
    assert not harness.sample("metapolicy_serve_fallbacks_total", policy="default/p",
                              reason="no_slot")  # fmt: skip


async def test_slot_mlp_gives_a_new_node_heuristic_scores_and_says_so(harness):
    await served(harness, "slot-mlp")
    harness.add_nodes(node_object("new", latency_ms=1))
    scores, headers = await harness.prioritize(pod_object("web-1"), [*NAMES, "new"])
    assert scores["b"] == 10  # the policy still chooses among the nodes it knows
    assert scores["new"] == expected_heuristic(harness, ["new"])["new"] > 0  # never starved
    assert headers["X-Metapolicy-Outcome"] == "policy"
    assert harness.sample("metapolicy_serve_fallbacks_total", policy="default/p",
                          reason="no_slot") == 1  # fmt: skip
    scores, headers = await harness.prioritize(pod_object("web-2"), ["new"])
    assert scores["new"] > 0 and headers["X-Metapolicy-Outcome"] == "fallback"


# ----- shadow mode -------------------------------------------------------------------------------
async def test_shadow_mode_answers_neutral_and_counts_agreement(harness):
    await served(harness, mode="shadow")
    first, second = pod_object("web-1", version=1), pod_object("web-2", version=1)
    for pod in (first, second):
        scores, headers = await harness.prioritize(pod, NAMES)
        assert set(scores.values()) == {0} and headers["X-Metapolicy-Outcome"] == "shadow"
    assert harness.sample("metapolicy_serve_decisions_total", policy="default/p",
                          mode="shadow") == 2  # fmt: skip
    for pod, node in ((first, "b"), (second, "a")):  # the policy chose b both times
        bound = copy.deepcopy(pod)
        bound["spec"]["nodeName"] = node
        bound["metadata"]["resourceVersion"] = "2"
        harness.add_pods(pod, bound)
    assert harness.sample("metapolicy_shadow_bound_total", policy="default/p") == 2
    assert harness.sample("metapolicy_shadow_agreements_total", policy="default/p") == 1
    assert len(harness.shadow) == 0


# ----- hot swap ----------------------------------------------------------------------------------
async def test_a_promotion_is_served_and_a_rolled_back_candidate_never(harness):
    first = await served(harness)
    seen: list[int] = []
    stop = asyncio.Event()

    async def scheduler():  # requests all along; none may fail, none may mix versions
        i = 0
        while not stop.is_set():
            i += 1
            status, body, headers = await harness.call(
                "prioritize", {"Pod": pod_object(f"w{i}"), "Nodes": None, "NodeNames": NAMES}
            )
            assert status == 200 and headers["X-Metapolicy-Outcome"] == "policy", body
            seen.append(int(headers["X-Metapolicy-Version"]))

    load = asyncio.create_task(scheduler())
    store = harness.store("p")
    from metapolicy.checkpoint import policy_to_checkpoint

    rejected = made_by_operator(Outcome.ROLLED_BACK)
    rolled_back = store.save(
        policy_to_checkpoint(untrained("node-set", NODES, seed=1), record=rejected)
    )
    promoted = store.save(
        policy_to_checkpoint(untrained("node-set", NODES, seed=2), record=made_by_operator())
    )
    store.set_active(promoted)
    await wait_for(lambda: seen and seen[-1] == promoted, what="the promoted version serves")
    stop.set()
    await load
    assert set(seen) <= {first, promoted} and rolled_back not in seen
    assert seen == sorted(seen)  # never back to the old one once switched
    assert harness.sample("metapolicy_served_version", policy="default/p") == promoted


# ----- metrics -----------------------------------------------------------------------------------
async def test_a_new_policy_has_every_series_at_zero(harness):
    harness.add_policy("p")
    response = await harness.client.get("/metrics")
    text = await response.text()
    for reason in FALLBACK_REASONS:
        assert (
            f'metapolicy_serve_fallbacks_total{{policy="default/p",reason="{reason}"}} 0.0' in text
        )
    for mode in ("active", "shadow"):
        assert f'metapolicy_serve_decisions_total{{mode="{mode}",policy="default/p"}} 0.0' in text
    assert 'metapolicy_shadow_bound_total{policy="default/p"} 0.0' in text
    assert 'metapolicy_shadow_agreements_total{policy="default/p"} 0.0' in text
    assert 'metapolicy_served_version{policy="default/p"} 0.0' in text
    assert 'metapolicy_serve_request_duration_seconds_bucket{le="0.0005",verb="prioritize"}' in text
    harness.registry.apply_policy("DELETED", {"metadata": {"namespace": "default", "name": "p"}})
    text = await (await harness.client.get("/metrics")).text()
    assert 'policy="default/p"' not in text


async def test_probes(harness):
    assert (await harness.client.get("/healthz")).status == 200
    assert (await harness.client.get("/readyz")).status == 200


async def test_a_version_without_its_adaptation_record_is_never_served(harness):
    """The operator writes every version with its record, in one write: a version without one
    was not written by it whole, and the server refuses it like a corrupt one."""
    from metapolicy.checkpoint import policy_to_checkpoint

    harness.add_nodes(*NODES)
    store = harness.store("p")
    version = store.save(policy_to_checkpoint(untrained("node-set", NODES)))
    store.set_active(version)
    harness.add_policy("p")
    await wait_for(
        lambda: harness.registry.policies["default/p"].problem == "checkpoint_unreadable",
        what="the version without a record is refused",
    )
    assert harness.registry.policies["default/p"].active is None
