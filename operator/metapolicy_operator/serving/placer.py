"""One scheduling request's answer: which policy places the pod, what it prefers, and what to
answer when anything is wrong (fail open: heuristic scores, never an error).

Runs on the event loop, except the policy's forward pass (and the feature arithmetic before
it), which runs on a compute thread under the request's latency budget: past the budget the
answer is the heuristic one, and the late evaluation is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metapolicy_operator.pods import InvalidPod
from metapolicy_operator.serving.cache import ClusterCache, NodeInfo, node_info
from metapolicy_operator.serving.metrics import ServeMetrics
from metapolicy_operator.serving.observation import (
    PodRequest,
    Snapshot,
    UnreadableNode,
    observe,
    read_pod,
    snapshot,
)
from metapolicy_operator.serving.policies import ActiveVersion, PolicyRegistry, ServedPolicy
from metapolicy_operator.serving.scores import heuristic_scores, neutral_scores, policy_scores
from metapolicy_operator.serving.shadow import ShadowLog
from metapolicy_operator.serving.wire import ExtenderArgs

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # at most one log line per (policy, reason) this often


@dataclass
class Answer:
    scores: np.ndarray  # per candidate, 0..10
    outcome: str  # metrics.OUTCOMES
    policy: str = ""
    version: int | None = None
    fallbacks: list[str] = field(default_factory=list)  # metrics.FALLBACK_REASONS
    decided: str | None = None  # "active" or "shadow" when the policy chose
    choice: str | None = None


@dataclass
class FilterAnswer:
    passing: list[int]  # candidate positions that fit
    failed: dict[str, str]  # node -> why it was removed
    outcome: str
    policy: str = ""
    fallbacks: list[str] = field(default_factory=list)


class RateLimitedLog:
    """One warning per key every `every_s`, saying how many were suppressed meanwhile."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def warning(self, policy: str, reason: str, detail: str) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get((policy, reason), (-np.inf, 0))
        if now - last < self.every_s:
            self._last[(policy, reason)] = (last, suppressed + 1)
            return
        self._last[(policy, reason)] = (now, 0)
        more = f" ({suppressed} more since the last line)" if suppressed else ""
        log.warning("fallback %s for policy %r: %s%s", reason, policy, detail, more)


def evaluate(active: ActiveVersion, snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
    """(logits, scorable) over the snapshot's nodes: the compute thread's work."""
    obs = observe(snap)
    return active.policy.preferences(obs, snap.names)[0], active.policy.scorable(snap.names)


class Placer:
    def __init__(
        self,
        cache: ClusterCache,
        registry: PolicyRegistry,
        shadow: ShadowLog,
        metrics: ServeMetrics,
        compute: Executor,
        budget_s: float = 0.030,
    ) -> None:
        self.cache = cache
        self.registry = registry
        self.shadow = shadow
        self.metrics = metrics
        self.compute = compute
        self.budget_s = budget_s
        self.log = RateLimitedLog()

    # ----- prioritize -----------------------------------------------------------------------
    async def prioritize(self, args: ExtenderArgs, started: float) -> Answer:
        """`started`: time.perf_counter() when the request arrived (the budget counts from it)."""
        count = len(args.names)
        if args.pod_error:  # the candidates are readable: answer them, transparently
            self._note("", "unparsable_pod", args.pod_error)
            return Answer(neutral_scores(count), "fallback", fallbacks=["unparsable_pod"])
        try:
            matched = self.registry.matching(args.pod)
        except Exception as error:
            return self._heuristic(args, "", "internal_error", repr(error))
        if not matched:
            return Answer(neutral_scores(count), "neutral")
        if len(matched) > 1:
            names = ", ".join(sorted(p.key for p in matched))
            self._note("", "ambiguous_policy", f"pod {_pod_name(args.pod)} matches {names}")
            return Answer(neutral_scores(count), "neutral", fallbacks=["ambiguous_policy"])
        served = matched[0]
        mode = served.config.mode
        if mode == "off":
            return Answer(neutral_scores(count), "neutral", policy=served.key)
        try:
            return await self._decide(served, args, started, shadow=mode == "shadow")
        except Exception as error:  # a bug must not block a pod
            log.exception("internal error placing pod %s", _pod_name(args.pod))
            return self._fail(served, args, "internal_error", repr(error), mode == "shadow")

    async def _decide(
        self, served: ServedPolicy, args: ExtenderArgs, started: float, shadow: bool
    ) -> Answer:
        key = served.key
        active, reason = served.serving()  # one version for the whole request
        if active is None:
            return self._fail(served, args, reason or "no_active_version", "", shadow)
        try:
            pod = read_pod(args.pod)
        except InvalidPod as error:
            return self._fail(served, args, "unparsable_pod", str(error), shadow)
        try:
            request_nodes = _request_nodes(args)
            snap = snapshot(
                self.cache,
                served.config.spec.selector,
                active.node_names,
                pod,
                args.names,
                served.arrivals,
                time.time(),
                request_nodes,
            )
        except UnreadableNode as error:
            return self._fail(served, args, "unparsable_node", str(error), shadow)
        if not snap.names or (snap.candidates < 0).all():
            # None of the candidates is one of the policy's nodes: it has nothing to say.
            return Answer(neutral_scores(len(args.names)), "neutral", key, active.version)
        remaining = started + self.budget_s - time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            logits, scorable = await asyncio.wait_for(
                loop.run_in_executor(self.compute, evaluate, active, snap), max(remaining, 0.0)
            )
        except TimeoutError:
            detail = f"over the {self.budget_s * 1000:.0f} ms budget"
            return self._fail(served, args, "over_budget", detail, shadow)
        return self._answer(served, active, args, pod, snap, logits, scorable, shadow)

    def _answer(
        self,
        served: ServedPolicy,
        active: ActiveVersion,
        args: ExtenderArgs,
        pod: PodRequest,
        snap: Snapshot,
        logits: np.ndarray,
        scorable: np.ndarray,
        shadow: bool,
    ) -> Answer:
        key = served.key
        mine = snap.candidates >= 0
        index = np.maximum(snap.candidates, 0)
        scored = mine & scorable[index]
        candidate_logits = np.where(scored, logits[index], -np.inf)
        answer = Answer(
            neutral_scores(len(args.names)), "policy", key, active.version, decided="active"
        )
        no_slot = mine & ~scored
        if no_slot.any():  # slot-mlp and nodes that joined after the last adaptation
            names = [args.names[i] for i in np.flatnonzero(no_slot)]
            self._note(key, "no_slot", f"heuristic scores for {len(names)} new node(s) {names}")
            answer.fallbacks.append("no_slot")
        if not scored.any():
            answer.scores = self._heuristic_scores(args, pod, no_slot)
            answer.outcome, answer.decided = "fallback", None
            return answer
        choice = args.names[int(np.argmax(candidate_logits))]
        answer.choice = choice
        if shadow:
            self.shadow.record(pod.uid, key, choice)
            answer.outcome, answer.decided = "shadow", "shadow"
            return answer
        scores = policy_scores(np.where(scored, candidate_logits, -1e9))
        if no_slot.any():
            scores = np.where(no_slot, self._heuristic_scores(args, pod, no_slot), scores)
        answer.scores = np.where(mine, scores, 0)
        return answer

    # ----- failing open ---------------------------------------------------------------------
    def _fail(
        self, served: ServedPolicy, args: ExtenderArgs, reason: str, detail: str, shadow: bool
    ) -> Answer:
        if shadow:  # the default scheduler decides anyway; only the record is missing
            self._note(served.key, reason, detail)
            return Answer(
                neutral_scores(len(args.names)), "neutral", served.key, fallbacks=[reason]
            )
        return self._heuristic(args, served.key, reason, detail)

    def _heuristic(self, args: ExtenderArgs, policy: str, reason: str, detail: str) -> Answer:
        self._note(policy, reason, detail)
        try:
            pod = read_pod(args.pod)
        except Exception:
            pod = None
        try:
            scores = self._heuristic_scores(args, pod, np.ones(len(args.names), bool))
        except Exception:
            log.exception("heuristic scores failed; answering neutral scores")
            scores = neutral_scores(len(args.names))
        return Answer(scores, "fallback", policy, fallbacks=[reason])

    def _heuristic_scores(
        self, args: ExtenderArgs, pod: PodRequest | None, where: np.ndarray
    ) -> np.ndarray:
        """kube-scheduler's default rule for the candidates at `where` (others 0)."""
        try:
            request_nodes = _request_nodes(args) or {}
        except Exception:
            request_nodes = {}
        infos = [request_nodes.get(n) or self.cache.nodes.get(n) for n in args.names]
        allocatable = (
            np.array([i.allocatable_millicores if i else 0 for i in infos]),
            np.array([i.allocatable_bytes if i else 0 for i in infos]),
        )
        used = np.array([self.cache.requested(n)[:2] for n in args.names], float).reshape(-1, 2)
        demand = (pod.millicores, pod.bytes) if pod else (0, 0)
        scores = heuristic_scores(allocatable, (used[:, 0], used[:, 1]), demand)
        return np.where(where, scores, 0)

    def _note(self, policy: str, reason: str, detail: str) -> None:
        self.log.warning(policy, reason, detail)

    # ----- filter ---------------------------------------------------------------------------
    def filter(self, args: ExtenderArgs) -> FilterAnswer:
        """Remove only the candidates the pod cannot fit on by this server's accounting, and
        only for pods an active policy places; every other pod passes untouched."""
        everything = list(range(len(args.names)))
        if args.pod_error:
            self._note("", "unparsable_pod", args.pod_error)
            return FilterAnswer(everything, {}, "fallback", fallbacks=["unparsable_pod"])
        try:
            matched = self.registry.matching(args.pod)
        except Exception as error:
            self._note("", "internal_error", repr(error))
            return FilterAnswer(everything, {}, "fallback", fallbacks=["internal_error"])
        if len(matched) > 1:
            return FilterAnswer(everything, {}, "neutral", fallbacks=["ambiguous_policy"])
        if not matched or matched[0].config.mode != "active":
            return FilterAnswer(everything, {}, "neutral")
        key = matched[0].key
        try:
            pod = read_pod(args.pod)
            request_nodes = _request_nodes(args) or {}
        except InvalidPod as error:
            self._note(key, "unparsable_pod", str(error))
            return FilterAnswer(everything, {}, "fallback", key, ["unparsable_pod"])
        passing, failed = [], {}
        for i, name in enumerate(args.names):
            info = request_nodes.get(name) or self.cache.nodes.get(name)
            why = self._misfit(name, info, pod)
            if why is None:
                passing.append(i)
            else:
                failed[name] = why
        return FilterAnswer(passing, failed, "policy", key)

    def _misfit(self, name: str, info: NodeInfo | None, pod: PodRequest) -> str | None:
        if info is None or info.profile is None:
            return None  # nothing known against it
        millicores, nbytes, count = self.cache.requested(name)
        if millicores + pod.millicores > info.allocatable_millicores:
            return (
                f"Insufficient cpu: {millicores}m of {info.allocatable_millicores}m requested, "
                f"the pod needs {pod.millicores}m (metapolicy serve's accounting)"
            )
        if nbytes + pod.bytes > info.allocatable_bytes:
            return (
                f"Insufficient memory: {nbytes} of {info.allocatable_bytes} bytes requested, "
                f"the pod needs {pod.bytes} (metapolicy serve's accounting)"
            )
        if count + 1 > info.max_pods:
            return f"Too many pods: {count} of {info.max_pods} (metapolicy serve's accounting)"
        return None


def _request_nodes(args: ExtenderArgs) -> dict[str, NodeInfo] | None:
    """The Node objects of a request that is not node-cache capable, as the cache reads them."""
    if args.nodes is None:
        return None
    return {info.name: info for info in map(node_info, args.nodes) if info.name}


def _pod_name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"
