"""Training and serving cannot disagree: the server, fed Node and Pod objects equivalent to a
simulator state, builds exactly the simulator's observation."""

import numpy as np
import pytest

from metapolicy import features
from metapolicy.features import PodAttributes
from metapolicy.sim import PlacementSim
from metapolicy.workload import TaskClass, WorkloadSpec
from metapolicy_operator.serving.arrivals import ArrivalLog
from metapolicy_operator.serving.cache import ClusterCache, node_info, pod_info
from metapolicy_operator.serving.observation import UnreadableNode, observe, read_pod, snapshot
from tests.serving.conftest import node_object, pod_object

BASE = 1_700_000_000.0  # simulator time 0 as a Unix time
OWNER_KIND = {"batch": "Job", "service": "ReplicaSet", "stateful": "StatefulSet", "other": None}

# Every declared attribute shows up in some class: QoS, owner, priority, GPUs, duration hint.
CLASSES = (
    TaskClass("job", 0.4, cpu=(0.25, 1.0), memory_mib=(256, 2048), duration=(2, 8),
              owner="batch", priority=1000, duration_hint=30.0),
    TaskClass("web", 0.4, cpu=(0.25, 1.5), memory_mib=(256, 2048), duration=(5, 15),
              qos="Guaranteed", owner="service"),
    TaskClass("gpu", 0.1, cpu=(2.0, 4.0), memory_mib=(4096, 8192), duration=(10, 30),
              owner="stateful", gpu=1.0),
    TaskClass("bare", 0.1, cpu=(0.5, 2.0), memory_mib=(512, 1024), duration=(1, 5)),
)  # fmt: skip


def declaring(name: str, attributes: PodAttributes, **kwargs) -> dict:
    """A pod whose spec declares exactly these attributes."""
    annotations = {}
    if attributes.duration_hint_s is not None:
        annotations["metapolicy.dev/expected-duration"] = f"{attributes.duration_hint_s}s"
    pod = pod_object(
        name,
        qos=attributes.qos,
        owner_kind=OWNER_KIND[attributes.owner],
        annotations=annotations,
        **kwargs,
    )
    pod["spec"]["priority"] = attributes.priority
    if attributes.gpu:
        limits = pod["spec"]["containers"][0]["resources"].setdefault("limits", {})
        limits["nvidia.com/gpu"] = str(int(attributes.gpu))
    return pod


def quantised(sim: PlacementSim) -> None:
    """Requests in whole millicores and MiB, as Kubernetes quantities write them."""
    sim.held_cpu[:] = np.round(sim.held_cpu, 3)
    sim.held_memory[:] = np.round(sim.held_memory)
    sim.used_cpu[:] = sim.held_cpu.sum(-1)
    sim.used_memory[:] = sim.held_memory.sum(-1)
    i = sim.step_index
    sim.tasks.cpu[:, i] = np.round(sim.tasks.cpu[:, i], 3)
    sim.tasks.memory[:, i] = np.round(sim.tasks.memory[:, i])
    sim._placement = None


def play(sim: PlacementSim, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        _, fits, _ = sim.placement()
        choices = np.flatnonzero(fits[0]) if fits[0].any() else np.arange(sim.size)
        sim.step(np.array([rng.choice(choices)]))


def attributes_of(row: np.ndarray) -> PodAttributes:
    for c in CLASSES:
        if np.array_equal(c.attributes().vector(), row):
            return c.attributes()
    raise AssertionError("no task class declares these attributes")


def server_side(sim: PlacementSim) -> tuple[ClusterCache, ArrivalLog, dict]:
    """The simulator's state as the API would serve it, fed to the server's cache."""
    cache, arrivals = ClusterCache(), ArrivalLog()
    for node in sim.nodes:
        obj = node_object(node.name, node.cpu, node.memory_mib, node.latency_ms, max_pods=sim.slots)
        cache.apply_node("ADDED", node_info(obj))
    qos = features.QOS_CLASSES
    running = set()
    for n, node in enumerate(sim.nodes):
        for s in np.flatnonzero(sim.held_cpu[0, n] > 0):
            start = sim.start[0, n, s]
            running.add(float(start))
            pod = pod_object(
                f"run-{n}-{s}",
                cpu=f"{round(sim.held_cpu[0, n, s] * 1000)}m",
                memory=f"{round(sim.held_memory[0, n, s])}Mi",
                node=node.name,
                phase="Running",
                created=BASE + start,
                started=BASE + start,
                qos=qos[sim.held_qos[0, n, s]],
            )
            cache.apply_pod("ADDED", pod_info(pod))
            arrivals.add(BASE + start, pod["metadata"]["uid"])
    i = sim.step_index
    for j in range(i):  # finished or rejected tasks: gone from the cluster, still arrivals
        if float(sim.tasks.arrival[0, j]) not in running:
            arrivals.add(BASE + sim.tasks.arrival[0, j], f"gone-{j}")
    pending = declaring(
        "pending",
        attributes_of(sim.tasks.attributes[0, i]),
        cpu=f"{round(sim.tasks.cpu[0, i] * 1000)}m",
        memory=f"{round(sim.tasks.memory[0, i])}Mi",
        created=BASE + sim.tasks.arrival[0, i],
    )
    cache.apply_pod("ADDED", pod_info(pending))
    arrivals.add(BASE + sim.tasks.arrival[0, i], pending["metadata"]["uid"])
    return cache, arrivals, pending


@pytest.mark.parametrize(("seed", "steps"), [(0, 40), (1, 120), (2, 200)])
def test_the_server_observes_what_the_simulator_observes(seed, steps):
    from metapolicy.cluster import make_cluster

    workload = WorkloadSpec(episode_tasks=256, task_classes=CLASSES, load=0.9)
    sim = PlacementSim(make_cluster(6, seed=seed), workload, batch=1)
    sim.reset(seed)
    play(sim, steps, seed)
    quantised(sim)
    expected = features.observe(*sim.scheduler_view())
    assert (sim.held_cpu > 0).sum() > 5  # pods are running: ages and QoS shares matter

    cache, arrivals, pending = server_side(sim)
    snap = snapshot(
        cache, None, sim.names, read_pod(pending), sim.names, arrivals, BASE + sim.now[0]
    )
    got = observe(snap)
    assert snap.names == sim.names
    np.testing.assert_allclose(got.nodes, expected.nodes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.task, expected.task, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.mask, expected.mask)
    pressure = features.TASK_FEATURE_NAMES.index("arrival_pressure")
    assert steps < 100 or expected.task[0, pressure] != 0  # the arrival log is exercised


def test_the_observation_covers_slot_nodes_then_new_candidates():
    cache = ClusterCache()
    for name, latency in (("a", 2), ("b", 5), ("new", 1), ("cordoned", 1)):
        cache.apply_node("ADDED", node_info(node_object(name, latency_ms=latency)))
    cordoned = node_object("cordoned")
    cordoned["spec"]["unschedulable"] = True
    cordoned["metadata"]["resourceVersion"] = "2"
    cache.apply_node("MODIFIED", node_info(cordoned))
    pod = read_pod(pod_object("p"))
    # slot "gone" left the cluster; "b" is a slot but not a candidate: context only
    snap = snapshot(cache, None, ["a", "gone", "b"], pod, ["new", "a", "cordoned"],
                    ArrivalLog(), BASE)  # fmt: skip
    assert snap.names == ["a", "b", "new"]
    assert snap.candidates.tolist() == [2, 0, -1]
    assert snap.state.available.all()


def test_an_unknown_candidate_is_reported():
    with pytest.raises(UnreadableNode, match="not in the server's cache"):
        snapshot(ClusterCache(), None, [], read_pod(pod_object("p")), ["x"], ArrivalLog(), BASE)
