"""A scheduler driver that behaves like kube-scheduler with the MetaPolicy extender configured.

There is no kube-scheduler on the development machines (the emulator is an API, not a
cluster), so this plays the second scheduler profile of `manifests/scheduler/`:

1. it watches pods (an informer of raw API objects) and takes the Pending ones with
   `spec.schedulerName: metapolicy-scheduler` one at a time, oldest first;
2. it filters the nodes as the default profile does (`kube_rules`: taints and tolerations,
   cordons, not-Ready, `spec.nodeSelector`, and resources by its own accounting of the pods
   bound to each node, plus the pods it has bound and not yet seen bound: kube-scheduler's
   "assumed" pods);
3. it calls the extender's `filter`, then, with two or more nodes left, `prioritize`, over
   HTTP with the JSON kube-scheduler sends (`extender.ExtenderClient`, configured from the
   shipped KubeSchedulerConfiguration); with one node left kube-scheduler scores nothing;
4. each node's total is the default resource scores plus `Score x weight x 10`; the highest
   wins, ties at random (selectHost); the pod is bound through `pods/NAME/binding`.

Failures as kube-scheduler handles them: a prioritize error is always skipped (the node keeps
its default score); a filter error skips the extender when it is `ignorable`, else the pod
waits and is retried. A pod that fits nowhere waits too, with kube-scheduler's backoff (1 s
doubling to 10 s) and until something changes (a node or a pod), like its unschedulable queue.

Every attempt is recorded (`Decision`): the node chosen, the extender's top choice, what the
default rule alone would have picked in the same state, and the timings. A `Counterfactual`
(`e2e/counterfactual.py`) follows the same pods through a cluster scheduled by the default rule
alone, for the demo's comparison.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import kubernetes

from e2e.cluster import Kube
from e2e.counterfactual import Counterfactual
from e2e.extender import ExtenderClient, ExtenderConfig, ExtenderError
from e2e.informer import Informer, object_key
from e2e.kube_rules import (
    Allocatable,
    Usage,
    allocatable,
    default_scores,
    misfit,
    node_name,
    select_host,
    untolerated_taint,
    usage_by_node,
)
from e2e.kubelet import Kubelet
from metapolicy_operator.pods import InvalidPod, Requests, pod_requests

SCHEDULER_NAME = "metapolicy-scheduler"
INITIAL_BACKOFF = 1.0  # podInitialBackoffSeconds
MAX_BACKOFF = 10.0  # podMaxBackoffSeconds
UNSCHEDULABLE_FLUSH = 30.0  # kube-scheduler: 5 min (podMaxInUnschedulablePodsDuration)


@dataclass(frozen=True)
class Decision:
    """One scheduling attempt of one pod."""

    pod: str  # namespace/name
    at: float  # time.time() when the attempt started
    cpu: float = 0.0  # cores requested
    memory_mib: float = 0.0
    node: str | None = None  # bound to; None when the pod waits (see `reason`)
    candidates: tuple[str, ...] = ()  # after the default profile's filters
    feasible: tuple[str, ...] = ()  # after the extender's filter
    default_scores: Mapping[str, float] = field(default_factory=dict)
    extender_scores: Mapping[str, int] | None = None  # None: not called, or failed
    totals: Mapping[str, float] = field(default_factory=dict)
    default_choice: str | None = None  # the default rule alone, same state, same candidates
    filter_error: str | None = None
    prioritize_error: str | None = None
    reason: str | None = None  # why the pod was not bound
    extender_seconds: float = 0.0  # filter + prioritize, wall clock
    bound_at: float | None = None
    # What the MetaPolicy server said in its prioritize answer's headers (None: not said).
    outcome: str | None = None  # policy, neutral, fallback, shadow
    version: int | None = None  # the checkpoint version that scored

    @property
    def extender_top(self) -> tuple[str, ...]:
        """The nodes the extender scored highest (all of them when its scores are equal)."""
        if not self.extender_scores:
            return ()
        scores = {n: s for n, s in self.extender_scores.items() if n in self.feasible}
        if not scores:
            return ()
        best = max(scores.values())
        return tuple(sorted(n for n, s in scores.items() if s == best))

    @property
    def extender_decided(self) -> bool:
        """The extender preferred some nodes over others (active mode; neutral scores do not)."""
        scores = [s for n, s in (self.extender_scores or {}).items() if n in self.feasible]
        return len(set(scores)) > 1

    @property
    def followed_extender(self) -> bool:
        return self.node is not None and self.node in self.extender_top


@dataclass
class _Waiting:
    """An unschedulable pod: retried once its backoff is over and something has changed."""

    attempts: int
    retry_at: float
    epoch: int  # the driver's change counter when it failed


@dataclass
class SchedulerDriver:
    """Schedules the pods of `scheduler_name`; `start()`, then `stop()` (bounded)."""

    kube: Kube
    extender: ExtenderConfig | None
    pods: Informer
    nodes: Informer
    scheduler_name: str = SCHEDULER_NAME
    seed: int = 0
    on_decision: Callable[[Decision], None] | None = None
    decisions: list[Decision] = field(default_factory=list)
    counterfactual: Counterfactual = field(default_factory=Counterfactual)
    errors: list[str] = field(default_factory=list)
    kubelet: Kubelet | None = None  # set by `scheduling()`
    joined: dict[str, float] = field(default_factory=dict)  # node -> time.time() first seen

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.default_rng = random.Random(self.seed + 1)
        self.client = ExtenderClient(self.extender) if self.extender else None
        self._assumed: dict[str, tuple[str, Requests]] = {}  # pod key -> (node, requests)
        self._waiting: dict[str, _Waiting] = {}
        self._order: dict[str, int] = {}  # pod key -> when this driver first saw it
        self._epoch = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler-driver", daemon=True)
        self.pods.add_handler(self._pod_event)
        self.nodes.add_handler(self._node_event)

    # ----- lifecycle ---------------------------------------------------------------------
    def start(self) -> SchedulerDriver:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join(timeout)

    def running(self) -> bool:
        return self._thread.is_alive()

    # ----- what tests and the demo read --------------------------------------------------
    def bound(self) -> list[Decision]:
        return [d for d in self.decisions if d.node is not None]

    def pending(self) -> list[str]:
        """Keys of this scheduler's pods that wait for a node."""
        return [object_key(p) for p in self._pending_pods()]

    # ----- informer events ---------------------------------------------------------------
    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        key = object_key(pod)
        with self._changed:
            if kind == "DELETED":
                self._assumed.pop(key, None)
                self._waiting.pop(key, None)
                self.counterfactual.remove(key)
                self._epoch += 1  # room freed: unschedulable pods may fit now
            else:
                self._order.setdefault(key, len(self._order))
                spec = pod.get("spec") or {}
                if spec.get("nodeName"):
                    self._assumed.pop(key, None)
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    self._epoch += 1
            self._changed.notify_all()

    def _node_event(self, kind: str, node: dict[str, Any]) -> None:
        with self._changed:
            if kind != "DELETED":
                self.joined.setdefault(node_name(node), time.time())
            self._epoch += 1
            self._changed.notify_all()

    # ----- the scheduling loop -----------------------------------------------------------
    def _run(self) -> None:
        while not (self.pods.synced.is_set() and self.nodes.synced.is_set()):
            if self._stop.wait(0.05):  # kube-scheduler, too, waits for its caches
                return
        while not self._stop.is_set():
            pod = self._next_pod()
            if pod is None:
                continue
            try:
                self._schedule_one(pod)
            except Exception as error:  # recorded; a test asserts none happened
                self.errors.append(f"{object_key(pod)}: {type(error).__name__}: {error}")
                self._backoff(object_key(pod))

    def _pending_pods(self) -> Iterator[dict[str, Any]]:
        for pod in self.pods.snapshot():
            spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
            if spec.get("schedulerName") != self.scheduler_name or spec.get("nodeName"):
                continue
            if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in (
                "Succeeded",
                "Failed",
            ):
                continue
            if object_key(pod) in self._assumed:
                continue
            yield pod

    def _next_pod(self) -> dict[str, Any] | None:
        """The oldest ready pod (FIFO by creation), or None after waiting for a change."""
        with self._changed:
            now = time.monotonic()
            ready, wake = [], now + 1.0
            for pod in self._pending_pods():
                key = object_key(pod)
                waiting = self._waiting.get(key)
                if waiting is not None:
                    changed = self._epoch > waiting.epoch
                    flushed = now - waiting.retry_at >= UNSCHEDULABLE_FLUSH
                    if now < waiting.retry_at or not (changed or flushed):
                        wake = min(wake, max(waiting.retry_at, now + 0.05))
                        continue
                created = (pod.get("metadata") or {}).get("creationTimestamp") or ""
                ready.append((created, self._order.get(key, 0), key, pod))
            if ready:
                return min(ready, key=lambda r: r[:3])[3]
            self._changed.wait(timeout=max(0.01, wake - now))
            return None

    def _backoff(self, key: str) -> None:
        with self._changed:
            previous = self._waiting.get(key)
            attempts = previous.attempts + 1 if previous else 1
            delay = min(INITIAL_BACKOFF * 2 ** (attempts - 1), MAX_BACKOFF)
            self._waiting[key] = _Waiting(attempts, time.monotonic() + delay, self._epoch)

    def _usage(self, pods: list[dict[str, Any]]) -> dict[str, Usage]:
        usage = usage_by_node(pods)
        seen_bound = {object_key(p) for p in pods if (p.get("spec") or {}).get("nodeName")}
        for key, (node, requests) in list(self._assumed.items()):
            if key not in seen_bound:
                usage[node] = usage.get(node, Usage()).plus(requests)
        return usage

    def _schedule_one(self, pod: dict[str, Any]) -> Decision:
        decision = Decision(pod=object_key(pod), at=time.time())
        try:
            requests = pod_requests(pod)
        except InvalidPod as error:
            return self._wait(replace(decision, reason=f"unreadable requests: {error}"))
        nodes = {node_name(n): n for n in self.nodes.snapshot()}
        eligible = self._eligible(pod, nodes)
        with self._changed:
            usage = self._usage(self.pods.snapshot())
        candidates = [
            name
            for name, room in eligible.items()
            if misfit(requests, room, usage.get(name, Usage())) is None
        ]
        defaults = default_scores(requests, {n: eligible[n] for n in candidates}, usage)
        decision = replace(
            decision,
            cpu=requests.cpu,
            memory_mib=requests.memory_mib,
            candidates=tuple(candidates),
            default_scores=defaults,
            default_choice=select_host(defaults, self.default_rng) if defaults else None,
        )
        if not candidates:
            return self._wait(replace(decision, reason="no node fits"))
        decision = self._extender_filter(pod, [nodes[n] for n in candidates], decision)
        if decision.reason is not None:
            return self._wait(decision)
        decision = self._extender_prioritize(pod, [nodes[n] for n in decision.feasible], decision)
        totals = decision.totals
        node = decision.feasible[0] if len(totals) == 1 else select_host(totals, self.rng)
        return self._bind(pod, replace(decision, node=node), requests, eligible)

    @staticmethod
    def _eligible(pod: dict[str, Any], nodes: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        """Nodes the pod may go to, room or not: its nodeSelector, taints it tolerates."""
        selector = (pod.get("spec") or {}).get("nodeSelector") or {}
        eligible = {}
        for name, node in sorted(nodes.items()):
            labels = (node.get("metadata") or {}).get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()):
                continue
            if untolerated_taint(pod, node) is None:
                eligible[name] = allocatable(node)
        return eligible

    def _extender_filter(
        self, pod: dict[str, Any], nodes: list[dict[str, Any]], decision: Decision
    ) -> Decision:
        """`feasible` set; `reason` set when the pod must wait (see the module's docstring)."""
        names = [node_name(n) for n in nodes]
        if self.client is None or not self.client.config.filter_verb:
            return replace(decision, feasible=tuple(names))
        try:
            kept = set(self.client.filter(pod, nodes).nodes)
        except ExtenderError as error:
            decision = replace(decision, filter_error=str(error))
            if not self.client.config.ignorable:
                return replace(decision, reason="extender filter failed")
            kept = set(names)  # ignorable: skipped, as if it were not configured
        feasible = tuple(n for n in names if n in kept)
        decision = replace(
            decision,
            feasible=feasible,
            extender_seconds=decision.extender_seconds + self.client.seconds,
        )
        return (
            decision if feasible else replace(decision, reason="the extender filtered every node")
        )

    def _extender_prioritize(
        self, pod: dict[str, Any], nodes: list[dict[str, Any]], decision: Decision
    ) -> Decision:
        """Totals: default scores plus Score x weight x 10; prioritize errors are skipped."""
        totals = {n: decision.default_scores[n] for n in decision.feasible}
        one_left = len(decision.feasible) == 1  # kube-scheduler scores nothing then
        if one_left or self.client is None or not self.client.config.prioritize_verb:
            return replace(decision, totals=totals)
        try:
            scores = self.client.prioritize(pod, nodes)
        except ExtenderError as error:
            return replace(
                decision,
                totals=totals,
                prioritize_error=str(error),
                extender_seconds=decision.extender_seconds + self.client.seconds,
            )
        factor = self.client.config.score_factor()
        for name, score in scores.items():
            if name in totals:
                totals[name] += score * factor
        headers = {k.lower(): v for k, v in self.client.headers.items()}
        version = headers.get("x-metapolicy-version")
        return replace(
            decision,
            totals=totals,
            extender_scores=scores,
            extender_seconds=decision.extender_seconds + self.client.seconds,
            outcome=headers.get("x-metapolicy-outcome"),
            version=int(version) if version and version.isdigit() else None,
        )

    def _bind(
        self,
        pod: dict[str, Any],
        decision: Decision,
        requests: Requests,
        eligible: Mapping[str, Allocatable],
    ) -> Decision:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": decision.node},
        }
        with self._changed:
            self._assumed[decision.pod] = (decision.node, requests)  # assume, then bind
        try:
            self.kube.core.create_namespaced_pod_binding(
                meta["name"], meta["namespace"], body, _preload_content=False
            )
        except kubernetes.client.ApiException as error:
            with self._changed:
                self._assumed.pop(decision.pod, None)
            failed = replace(decision, node=None, reason=f"binding: HTTP {error.status}")
            if error.status in (404, 409):  # gone, or bound meanwhile: nothing to retry
                return self._record(failed)
            return self._wait(failed)
        with self._changed:
            self._waiting.pop(decision.pod, None)
        self.counterfactual.place(decision.pod, requests, eligible)
        return self._record(replace(decision, bound_at=time.time()))

    def _wait(self, decision: Decision) -> Decision:
        self._backoff(decision.pod)
        return self._record(decision)

    def _record(self, decision: Decision) -> Decision:
        self.decisions.append(decision)
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision


@contextlib.contextmanager
def scheduling(
    kube: Kube, extender: ExtenderConfig | None, *, seed: int = 0, timeout: float = 30.0
) -> Iterator[SchedulerDriver]:
    """The driver with its pod and node informers and the minimal kubelet, for a block.

    Waits (bounded) until both caches are synced before yielding; stops everything on exit.
    The kubelet is `driver.kubelet`.
    """
    pods, nodes = Informer(kube, "pods"), Informer(kube, "nodes")
    driver = SchedulerDriver(kube, extender, pods, nodes, seed=seed)
    driver.kubelet = Kubelet(kube, pods, driver.scheduler_name)
    pods.start()
    nodes.start()
    try:
        for informer in (pods, nodes):
            if not informer.synced.wait(timeout):
                raise TimeoutError(f"the {informer.kind} informer did not sync in {timeout:.0f}s")
        driver.kubelet.start()
        driver.start()
        yield driver
    finally:
        driver.stop()
        driver.kubelet.stop()
        pods.stop()
        nodes.stop()
