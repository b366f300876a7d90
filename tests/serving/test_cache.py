"""The node/pod cache follows pods through their lives without drift, whatever order, repeats
and relists the events come in."""

import copy
import itertools
import random

import pytest

from metapolicy_operator.serving.cache import ClusterCache, node_info, pod_info
from tests.serving.conftest import node_object, pod_object, rfc3339

NODES = [f"node-{i}" for i in range(5)]
NAMES = [f"pod-{i}" for i in range(40)]


def test_a_pod_counts_from_binding_until_it_finishes():
    cache = ClusterCache()
    pod = pod_object("a", cpu="1500m", memory="1Gi", version=1)
    cache.apply_pod("ADDED", pod_info(pod))
    assert cache.requested("node-0") == (0, 0, 0)  # pending: counted nowhere
    bound = copy.deepcopy(pod)
    bound["spec"]["nodeName"] = "node-0"
    bound["metadata"]["resourceVersion"] = "2"
    cache.apply_pod("MODIFIED", pod_info(bound))
    assert cache.requested("node-0") == (1500, 2**30, 1)
    leaving = copy.deepcopy(bound)
    leaving["metadata"]["deletionTimestamp"] = rfc3339(1_700_000_100)
    leaving["metadata"]["resourceVersion"] = "3"
    cache.apply_pod("MODIFIED", pod_info(leaving))
    assert cache.requested("node-0") == (1500, 2**30, 1)  # still running until it stops
    done = copy.deepcopy(leaving)
    done["status"]["phase"] = "Succeeded"
    done["metadata"]["resourceVersion"] = "4"
    cache.apply_pod("MODIFIED", pod_info(done))
    assert cache.requested("node-0") == (0, 0, 0)
    cache.apply_pod(
        "DELETED", pod_info(done | {"metadata": done["metadata"] | {"resourceVersion": "5"}})
    )
    assert cache.pods == {} and cache.usage == {}


def test_late_and_repeated_events_change_nothing():
    cache = ClusterCache()
    created = pod_object("a", node="node-0", phase="Running", version=5)
    older = copy.deepcopy(created)
    older["metadata"]["resourceVersion"] = "3"
    older["spec"]["nodeName"] = "node-1"
    cache.apply_pod("ADDED", pod_info(created))
    cache.apply_pod("MODIFIED", pod_info(older))  # late
    cache.apply_pod("ADDED", pod_info(created))  # repeated
    assert cache.requested("node-0")[2] == 1 and cache.requested("node-1")[2] == 0
    deleted = copy.deepcopy(created)
    deleted["metadata"]["resourceVersion"] = "6"
    cache.apply_pod("DELETED", pod_info(deleted))
    cache.apply_pod("MODIFIED", pod_info(created))  # a ghost: the pod is gone
    assert cache.pods == {} and cache.totals() == {}


def test_a_new_pod_under_an_old_name_replaces_the_old_one():
    cache = ClusterCache()
    old = pod_object("a", node="node-0", phase="Running", uid="old", version=2)
    new = pod_object("a", node="node-1", phase="Running", uid="new", version=4)
    cache.apply_pod("ADDED", pod_info(old))
    cache.apply_pod("ADDED", pod_info(new))  # its predecessor's DELETED comes late
    cache.apply_pod(
        "DELETED", pod_info(old | {"metadata": old["metadata"] | {"resourceVersion": "3"}})
    )
    assert cache.pods["default/a"].uid == "new"
    assert cache.totals() == {"node-1": (500, 512 * 2**20, 1)}


def test_nodes_keep_their_newest_version():
    cache = ClusterCache()
    cache.apply_node("ADDED", node_info(node_object("n", cpu=4, version=3)))
    cache.apply_node("MODIFIED", node_info(node_object("n", cpu=8, version=2)))  # late
    assert cache.nodes["n"].profile.cpu == 4
    cache.apply_node("MODIFIED", node_info(node_object("n", cpu=8, ready=False, version=4)))
    assert cache.nodes["n"].profile.cpu == 8 and not cache.nodes["n"].usable
    cache.apply_node("DELETED", node_info(node_object("n", version=5)))
    assert cache.nodes == {}


def test_only_node_changes_a_policy_reads_reset_the_policy_views():
    cache = ClusterCache()
    cache.apply_node("ADDED", node_info(node_object("n", version=1)))
    generation = cache.node_generation
    heartbeat = node_object("n", version=2)
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "2025-01-01T00:00:00Z"
    cache.apply_node("MODIFIED", node_info(heartbeat))
    assert cache.node_generation == generation and cache.nodes["n"].version == 2
    cache.apply_node("MODIFIED", node_info(node_object("n", labels={"pool": "x"}, version=3)))
    assert cache.node_generation == generation + 1


def test_node_info_reads_max_pods_and_unreadable_resources():
    info = node_info(node_object("n", max_pods=32))
    assert info.max_pods == 32 and info.usable
    broken = node_object("m")
    broken["status"]["allocatable"]["cpu"] = "lots"
    broken["status"]["capacity"]["cpu"] = "lots"
    assert node_info(broken).profile is None and not node_info(broken).usable


# ----- the property: a long random life of many pods --------------------------------------------
class Cluster:
    """The truth: every pod's newest state, and the watch events that told it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.version = itertools.count(1)
        self.live: dict[str, dict] = {}
        self.events: list[tuple[str, dict]] = []

    def emit(self, kind: str, pod: dict) -> None:
        pod = copy.deepcopy(pod)
        pod["metadata"]["resourceVersion"] = str(next(self.version))
        if kind == "DELETED":
            self.live.pop(pod["metadata"]["name"])
        else:
            self.live[pod["metadata"]["name"]] = pod
        self.events.append((kind, pod))

    def step(self) -> None:
        rng = self.rng
        free = [n for n in NAMES if n not in self.live]
        action = rng.choices(
            ["create", "bind", "run", "finish", "terminate", "delete", "relabel"],
            [5, 5, 3, 2, 1, 3, 1],
        )[0]
        if action == "create" and free:
            cpu = f"{rng.choice([100, 250, 500, 1000, 2500])}m"
            memory = f"{rng.choice([64, 256, 1024, 4096])}Mi"
            pod = pod_object(rng.choice(free), cpu=cpu, memory=memory)
            if rng.random() < 0.3:  # an init container bigger than the app: the max rule
                pod["spec"]["initContainers"] = [
                    {"name": "init", "resources": {"requests": {"cpu": "3", "memory": "64Mi"}}}
                ]
            self.emit("ADDED", pod)
            return
        if not self.live:
            return
        pod = copy.deepcopy(self.live[rng.choice(sorted(self.live))])
        spec, status = pod["spec"], pod["status"]
        if action == "bind" and "nodeName" not in spec:
            spec["nodeName"] = rng.choice(NODES)
        elif action == "run" and spec.get("nodeName") and status["phase"] == "Pending":
            status["phase"] = "Running"
            status["startTime"] = rfc3339(1_700_000_000 + rng.random() * 100)
        elif action == "finish" and status["phase"] == "Running":
            status["phase"] = rng.choice(["Succeeded", "Failed"])
        elif action == "terminate":
            pod["metadata"]["deletionTimestamp"] = rfc3339(1_700_000_500)
        elif action == "relabel":
            pod["metadata"]["labels"] = {"v": str(rng.random())}
        elif action == "delete":
            self.emit("DELETED", pod)
            return
        else:
            return
        self.emit("MODIFIED", pod)


def perturbed(events: list, rng: random.Random) -> list:
    """Within one stretch: neighbours swapped, some events repeated later."""
    out = list(events)
    for i in range(len(out) - 1):
        if rng.random() < 0.15:
            out[i], out[i + 1] = out[i + 1], out[i]
    for _ in range(len(out) // 10):
        i = rng.randrange(len(out))
        out.insert(rng.randrange(i, len(out)) + 1, out[i])
    return out


def state(cache: ClusterCache) -> dict:
    return {k: (p.uid, p.node, p.holds, p.version) for k, p in cache.pods.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_cache_equals_a_recount_after_a_long_random_life(seed):
    rng = random.Random(seed)
    truth = Cluster(rng)
    cache = ClusterCache()
    delivered = 0
    for stretch in range(40):
        for _ in range(100):
            truth.step()
        if stretch % 9 == 8:  # a relist (410 Gone, a reconnect after an error): the whole truth
            cache.replace_pods([pod_info(p) for p in truth.live.values()])
        else:
            for kind, pod in perturbed(truth.events[delivered:], rng):
                cache.apply_pod(kind, pod_info(pod))
        delivered = len(truth.events)
        expected = ClusterCache()
        expected.replace_pods([pod_info(p) for p in truth.live.values()])
        assert state(cache) == state(expected), f"stretch {stretch}"
        assert cache.totals() == cache.recount() == expected.recount(), f"stretch {stretch}"
    assert sum(count for _, _, count in cache.totals().values()) > 0  # not vacuous
    assert len(truth.events) > 2000
