"""The policy's observation, built only from what a scheduler knows when a pod is scheduled.

One builder serves the simulator (training, evaluation) and the placement server (serving), so
the two cannot drift apart. Its inputs are exactly what kube-scheduler could see:

- per node: allocatable cpu and memory, the latency annotation, the cpu and memory requested by
  the pods bound to it, whether it has room for one more pod, and for each bound pod its cpu
  request, its QoS class and when it started (so its age);
- for the pod being placed: its requests and declared attributes (QoS class, GPU request,
  priority, owner kind, and an optional duration hint annotation);
- the arrival times of the policy's recent pods (creation timestamps).

Never a pod's true duration or a running pod's true end time: the simulator knows them for its
dynamics, and they never reach this module (a test changes them and checks the observation).

The immediate placement cost (latency plus a queueing delay that grows with the node's cpu
utilisation after placement, or a size-dependent rejection cost when the pod does not fit) is a
function of that visible state: a node feature here, the reward in the simulator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# ----- the cost model ------------------------------------------------------------------------
SERVICE_MS = 2.0  # service time on an idle node: cheap, so close big nodes attract small tasks
MAX_UTILISATION = 0.98  # queueing delay is capped here (u=0.98 -> 50x service time)
REJECT_BASE_MS = 50.0
REJECT_PER_CORE_MS = 100.0  # dropping a big task hurts more than dropping a small one
REWARD_SCALE = 100.0  # reward = -cost_ms / REWARD_SCALE keeps PPO's value targets near 1

# ----- feature scales --------------------------------------------------------------------------
CPU_REF, MEMORY_REF, LATENCY_REF = 16.0, 65536.0, 20.0
AGE_LOG_REF = 10.0  # log1p(age in s) / 10: a minute -> 0.41, a day -> 1.14
PRIORITY_LOG_REF = 21.0  # log1p(2e9), kube's largest priority -> 1
MAX_GPUS = 8.0
PRESSURE_SHORT = 16  # arrivals in the short window of the arrival-pressure feature
PRESSURE_WINDOW = 128  # arrival times kept for it (the long window)

QOS_CLASSES = ("Guaranteed", "Burstable", "BestEffort")
# Owner kinds, grouped by what they say about lifetime: run-to-completion, long-running
# replicas, stateful, and everything else (bare pods, DaemonSets, custom controllers).
OWNER_GROUPS = ("batch", "service", "stateful", "other")
OWNER_KIND_GROUP = {
    "Job": "batch",
    "CronJob": "batch",
    "ReplicaSet": "service",
    "Deployment": "service",
    "ReplicationController": "service",
    "StatefulSet": "stateful",
}

NODE_FEATURE_NAMES = (
    "cpu",
    "memory",
    "latency",
    "cpu_used",
    "memory_used",
    "cpu_free",
    "memory_free",
    "fits",
    "cost",
    "cpu_after",
    "relative_size",
    "cpu_free_after",
    "memory_free_after",
    "largest_free_if_here",
    *(f"held_{q}" for q in QOS_CLASSES),
    "mean_log_age",
)
ATTRIBUTE_NAMES = (
    *(f"qos_{q}" for q in QOS_CLASSES),
    "gpu",
    "priority",
    *(f"owner_{o}" for o in OWNER_GROUPS),
    "has_duration_hint",
    "log_duration_hint",
)
TASK_FEATURE_NAMES = (
    "cpu",
    "memory",
    *ATTRIBUTE_NAMES,
    "cluster_cpu_used",
    "fits_fraction",
    "largest_free",
    "second_largest_free",
    "arrival_pressure",
)
NODE_FEATURES = len(NODE_FEATURE_NAMES)
TASK_FEATURES = len(TASK_FEATURE_NAMES)
ATTRIBUTE_FEATURES = len(ATTRIBUTE_NAMES)
COST_FEATURE = NODE_FEATURE_NAMES.index("cost")
FITS_FEATURE = NODE_FEATURE_NAMES.index("fits")


@dataclass
class Observation:
    """Per-node features in the caller's node order; masked nodes are all-zero."""

    nodes: np.ndarray  # (B, N, NODE_FEATURES) float32
    task: np.ndarray  # (B, TASK_FEATURES) float32
    mask: np.ndarray  # (B, N) bool: True where a task may be placed
    # (B, N) int: which node of the whole node set each column is, when every state shows a
    # different sub-cluster (`metapolicy.subclusters`); None: the caller's node order
    members: np.ndarray | None = None

    @property
    def choices(self) -> np.ndarray:
        """(B, N) the nodes a placement may choose: those the task fits, as kube-scheduler's
        filter passes only those to an extender; every `mask` node when it fits none (it is
        rejected wherever it goes). The policy's logits mask the same set (`policy`)."""
        fits = self.mask & (self.nodes[..., FITS_FEATURE] > 0.5)
        return np.where(fits.any(-1, keepdims=True), fits, self.mask)


# ----- pod attributes ------------------------------------------------------------------------
@dataclass(frozen=True)
class PodAttributes:
    """What a pod declares about itself at creation: all a scheduler can know of its future."""

    qos: str = "Burstable"
    gpu: float = 0.0  # GPUs requested
    priority: int = 0
    owner: str = "other"  # an OWNER_GROUPS entry
    duration_hint_s: float | None = None  # annotation metapolicy.dev/expected-duration

    def __post_init__(self) -> None:
        if self.qos not in QOS_CLASSES:
            raise ValueError(f"qos {self.qos!r} is not one of {', '.join(QOS_CLASSES)}")
        if self.owner not in OWNER_GROUPS:
            raise ValueError(f"owner {self.owner!r} is not one of {', '.join(OWNER_GROUPS)}")
        if self.duration_hint_s is not None and not self.duration_hint_s >= 0:
            raise ValueError(f"duration hint {self.duration_hint_s!r} must be >= 0 seconds")

    @property
    def qos_index(self) -> int:
        return QOS_CLASSES.index(self.qos)

    def vector(self) -> np.ndarray:
        """(ATTRIBUTE_FEATURES,) float32, in ATTRIBUTE_NAMES order."""
        out = np.zeros(ATTRIBUTE_FEATURES, np.float32)
        out[self.qos_index] = 1.0
        out[3] = min(max(self.gpu, 0.0), MAX_GPUS) / MAX_GPUS
        out[4] = np.log1p(max(self.priority, 0)) / PRIORITY_LOG_REF
        out[5 + OWNER_GROUPS.index(self.owner)] = 1.0
        if self.duration_hint_s is not None:
            out[9] = 1.0
            out[10] = np.log1p(self.duration_hint_s) / AGE_LOG_REF
        return out

    def to_dict(self) -> dict:
        return {
            "qos": self.qos,
            "gpu": self.gpu,
            "priority": self.priority,
            "owner": self.owner,
            "duration_hint_s": self.duration_hint_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PodAttributes:
        return cls(**{k: data[k] for k in cls().to_dict() if k in data})


def owner_group(kind: str | None) -> str:
    """An ownerReference kind -> its OWNER_GROUPS entry."""
    return OWNER_KIND_GROUP.get(kind or "", "other")


# ----- the cluster as the scheduler sees it ----------------------------------------------------
@dataclass
class ClusterState:
    """Nodes and the pods bound to them, for B independent states over the same N nodes.

    Running pods are flat arrays (one entry per pod, any order) so that the simulator's padded
    slots (cpu 0 = empty) and the server's per-node pod lists are the same input.

    The node arrays are (N,) when every state has the same nodes, or (B, N) when each state is
    a different sub-cluster of a bigger node set (`metapolicy.subclusters`).
    """

    cpu: np.ndarray  # (N,) or (B, N) allocatable cores
    memory: np.ndarray  # (N,) or (B, N) allocatable MiB
    latency: np.ndarray  # (N,) or (B, N) ms
    available: np.ndarray  # (N,) or (B, N) bool: nodes the policy may use
    requested_cpu: np.ndarray  # (B, N) cores requested by bound pods
    requested_memory: np.ndarray  # (B, N) MiB
    has_room: np.ndarray  # (B, N) bool: room for one more pod (pod count)
    pod_node: np.ndarray  # (P,) int: b * N + n of the node each running pod is bound to
    pod_cpu: np.ndarray  # (P,) cores requested (0 adds nothing: padding)
    pod_start: np.ndarray  # (P,) seconds, when the pod started
    pod_qos: np.ndarray  # (P,) int index into QOS_CLASSES

    @property
    def batch(self) -> int:
        return self.requested_cpu.shape[0]


@dataclass
class PendingPods:
    """The pod being placed in each of the B states."""

    cpu: np.ndarray  # (B,) cores requested
    memory: np.ndarray  # (B,) MiB requested
    attributes: np.ndarray  # (B, ATTRIBUTE_FEATURES) from PodAttributes.vector()
    now: np.ndarray  # (B,) seconds, the scheduling time
    recent_arrivals: np.ndarray  # (B, PRESSURE_WINDOW) arrival times, oldest first, NaN = none


@dataclass(frozen=True)
class Placement:
    """Placing each pending pod on each node: (B, N) arrays."""

    cost: np.ndarray  # ms
    fits: np.ndarray  # bool
    cpu_after: np.ndarray  # cpu utilisation after placement


def placement(state: ClusterState, pods: PendingPods) -> Placement:
    """The immediate cost of each placement: the reward in the simulator, a feature here."""
    cpu_after = (state.requested_cpu + pods.cpu[:, None]) / state.cpu
    memory_after = (state.requested_memory + pods.memory[:, None]) / state.memory
    fits = (cpu_after <= 1 + 1e-9) & (memory_after <= 1 + 1e-9) & state.has_room
    queueing = SERVICE_MS / (1 - np.minimum(cpu_after, MAX_UTILISATION))
    reject = rejection_cost(pods.cpu)[:, None]
    cost = np.where(fits, state.latency + queueing, reject)
    return Placement(cost=cost, fits=fits, cpu_after=cpu_after)


def rejection_cost(cpu: np.ndarray) -> np.ndarray:
    return REJECT_BASE_MS + REJECT_PER_CORE_MS * cpu


def arrival_pressure(recent_arrivals: np.ndarray) -> np.ndarray:
    """log(long-run mean gap / mean of the last PRESSURE_SHORT gaps), in [-1, 1] after / 2.

    Positive during a burst. Only past arrival times are used, which a scheduler sees as pod
    creation timestamps; with fewer than four gaps known it says nothing (0).
    """
    times = np.asarray(recent_arrivals, float)
    known = ~np.isnan(times)
    count = known.sum(-1)
    last = times[:, -1]
    first = np.where(known, times, np.inf).min(-1)
    short_index = np.maximum(times.shape[1] - 1 - PRESSURE_SHORT, times.shape[1] - count)
    short_first = np.take_along_axis(times, short_index[:, None], -1)[:, 0]
    gaps = np.maximum(count - 1, 1)
    short_gaps = np.minimum(gaps, PRESSURE_SHORT)
    long_gap = (last - first) / gaps
    short_gap = (last - short_first) / short_gaps
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(np.maximum(long_gap, 1e-9) / np.maximum(short_gap, 1e-9))
    return np.where(count >= 5, np.clip(ratio, -2.0, 2.0) / 2.0, 0.0)


def pod_summary(state: ClusterState, now: np.ndarray) -> np.ndarray:
    """(B, N, 4): share of each node's cpu held per QoS class, and the cpu-weighted mean
    log-age of its pods. Ages are known to a scheduler; when the pods will end is not."""
    batch, size = state.requested_cpu.shape
    cells = batch * size
    node_cpu = np.broadcast_to(state.cpu, (batch, size)).reshape(-1)
    out = np.zeros((cells, 4))
    # Only pods holding cpu add anything; skipping the simulator's empty slots (most of them)
    # leaves every per-node sum bit for bit the same (x + 0.0 == x), at a fraction of the cost.
    live = np.flatnonzero(state.pod_cpu)
    pod_node, pod_cpu = state.pod_node[live], state.pod_cpu[live]
    pod_qos = state.pod_qos[live]
    for k in range(len(QOS_CLASSES)):
        weights = np.where(pod_qos == k, pod_cpu, 0.0)
        out[:, k] = np.bincount(pod_node, weights, cells) / node_cpu
    held = np.bincount(pod_node, pod_cpu, cells)
    pod_now = now[pod_node // size]
    log_age = np.log1p(np.maximum(pod_now - state.pod_start[live], 0.0)) / AGE_LOG_REF
    weighted = np.bincount(pod_node, pod_cpu * log_age, cells)
    out[:, 3] = np.divide(weighted, held, out=np.zeros(cells), where=held > 0)
    return out.reshape(batch, size, 4)


def _available_sum(values: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Per state, the sum of `values` over the available nodes. With one node set for all
    states this is the plain masked sum (kept exactly, so results do not move by a rounding)."""
    if available.ndim == 1:
        return values[..., available].sum(-1)
    return np.where(available, values, 0.0).sum(-1)


def observe(state: ClusterState, pods: PendingPods, where: Placement | None = None) -> Observation:
    """The observation for placing `pods` into `state` (pass `where` if already computed)."""
    where = where or placement(state, pods)
    available = state.available
    batch, size = state.requested_cpu.shape
    fits = where.fits & available
    free = np.where(available, state.cpu - state.requested_cpu, 0.0)
    # The two largest free blocks tell whether a big task could still land somewhere ...
    largest = np.sort(np.pad(free, ((0, 0), (1, 0))), axis=-1)[:, ::-1][:, :2]
    # ... and, per node, what the largest block would be if this task went there: the one
    # number a reservation rule needs ("do not fill the last home of a big task").
    others = np.where(free >= largest[:, :1], largest[:, 1:], largest[:, :1])
    largest_if_here = np.maximum(others, free - pods.cpu[:, None])
    biggest = np.where(available, state.cpu, -np.inf).max(-1, keepdims=True)
    relative_size = state.cpu / biggest
    static = np.stack(
        [state.cpu / CPU_REF, state.memory / MEMORY_REF, state.latency / LATENCY_REF], -1
    )
    nodes = np.concatenate(
        [
            np.broadcast_to(static, (batch, size, 3)),
            np.stack(
                [
                    state.requested_cpu / state.cpu,
                    state.requested_memory / state.memory,
                    (state.cpu - state.requested_cpu) / CPU_REF,
                    (state.memory - state.requested_memory) / MEMORY_REF,
                    fits,
                    np.minimum(where.cost / REWARD_SCALE, 10.0),
                    np.minimum(where.cpu_after, 2.0),
                    np.broadcast_to(relative_size, (batch, size)),
                    (state.cpu - state.requested_cpu - pods.cpu[:, None]) / CPU_REF,
                    (state.memory - state.requested_memory - pods.memory[:, None]) / MEMORY_REF,
                    largest_if_here / CPU_REF,
                ],
                axis=-1,
            ),
            pod_summary(state, pods.now),
        ],
        axis=-1,
    )
    nodes = np.where(np.broadcast_to(available, (batch, size))[..., None], nodes, 0.0)
    nodes = nodes.astype(np.float32)
    capacity = _available_sum(state.cpu, available)
    task = np.concatenate(
        [
            np.stack([pods.cpu / CPU_REF, pods.memory / MEMORY_REF], -1),
            pods.attributes,
            np.stack(
                [
                    _available_sum(state.requested_cpu, available) / capacity,
                    fits.mean(-1),
                    largest[:, 0] / CPU_REF,
                    largest[:, 1] / CPU_REF,
                    arrival_pressure(pods.recent_arrivals),
                ],
                -1,
            ),
        ],
        axis=-1,
    ).astype(np.float32)
    mask = np.broadcast_to(available, (batch, size)).copy()
    return Observation(nodes=nodes, task=task, mask=mask)
