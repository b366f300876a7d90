"""One controller per MetaPolicy: a loop that debounces changes, then reconciles the stored
state towards the eligible node set, one training or adaptation at a time.

Everything it decides comes from what is stored (the spec, the active checkpoint, the history
in status), so a restarted operator picks up where the last one stopped. PyTorch work runs in
worker processes; the loop only waits for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import safetensors.torch

from metapolicy.cluster import NodeProfile
from metapolicy.store import CheckpointError, CheckpointStore, FilesystemStore
from metapolicy.strategies import UnknownStrategy, check_strategy
from metapolicy_operator import jobs
from metapolicy_operator.config import OperatorConfig
from metapolicy_operator.configmap_store import ConfigMapStore
from metapolicy_operator.inventory import NodeIssue, SelectorError, eligible_profiles
from metapolicy_operator.metrics import Metrics
from metapolicy_operator.planning import Plan, attempt_settings, node_set_hash, plan
from metapolicy_operator.spec import InvalidSpec, PolicySpec, parse_spec
from metapolicy_operator.status import (
    adaptation_record,
    condition,
    conditions_for,
    now_iso,
    with_history,
)

GROUP, VERSION, PLURAL = "metapolicy.dev", "v1alpha1", "metapolicies"
ADAPT_REQUEST = "metapolicy.dev/adapt-request"

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Process-wide shared state: API clients, the worker pool, metrics, live controllers."""

    config: OperatorConfig
    api: kubernetes.client.ApiClient
    metrics: Metrics
    pool: ProcessPoolExecutor
    workers: asyncio.Semaphore
    controllers: dict[str, PolicyController] = field(default_factory=dict)
    node_digests: dict[str, tuple] = field(default_factory=dict)

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.api)

    async def run_job(self, fn: Callable, *args: Any) -> jobs.JobResult:
        """Run in a worker process, at most `workers` at a time across policies."""
        async with self.workers:
            try:
                return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
            except BrokenProcessPool:
                self.pool = jobs.make_pool(self.config.workers)  # a worker died (OOM, kill)
                raise


class PolicyController:
    def __init__(self, runtime: Runtime, body: kopf.Body, nodes: kopf.Index) -> None:
        self.runtime = runtime
        self.body = body  # kopf keeps a daemon's body live, but it can lag our own status writes
        self.current: Mapping = dict(body)  # the freshest object: re-read, or a patch response
        self.nodes = nodes
        self.key = f"{body.meta.namespace}/{body.meta.name}"
        self.wake = asyncio.Event()
        self.last_change = time.monotonic()
        self.seen: tuple[Any, Any] = (None, None)
        runtime.metrics.start(self.key)
        self._reported: dict[str, str] = {}

    # ----- triggers -----------------------------------------------------------------------------
    def nudge(self) -> None:
        """A node changed: reconcile after the settle window has been quiet."""
        self.last_change = time.monotonic()
        self.wake.set()

    def observe(self, body: Mapping) -> None:
        """Wake on spec or adapt-request changes, not on our own status patches."""
        meta = body.get("metadata", {})
        seen = (meta.get("generation"), (meta.get("annotations") or {}).get(ADAPT_REQUEST))
        if seen != self.seen:
            self.seen = seen
            self.wake.set()

    async def run(self, stopped: kopf.DaemonStopped) -> None:
        await self.settle(stopped)  # a policy created amid node changes trains on the final set
        retry_in: float | None = await self.reconcile_safely()
        while not stopped:
            waiter = asyncio.ensure_future(self.wake.wait())
            stop = asyncio.ensure_future(stopped.wait())
            await asyncio.wait(
                {waiter, stop}, timeout=retry_in, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stop.cancel()
            if stopped:
                return
            # Cleared only now: a change that arrives while we settle or reconcile sets it
            # again and is handled right after, never lost.
            self.wake.clear()
            await self.settle(stopped)
            retry_in = await self.reconcile_safely()

    async def settle(self, stopped: kopf.DaemonStopped) -> None:
        """Debounce: a burst of node changes becomes one reconcile of the final node set."""
        try:
            window = parse_spec(self.body.get("spec")).settle_seconds
        except InvalidSpec:
            return
        while not stopped and (remaining := self.last_change + window - time.monotonic()) > 0:
            await stopped.wait(remaining)

    # ----- reconcile ------------------------------------------------------------------------------
    async def reconcile_safely(self) -> float | None:
        try:
            return await self.reconcile()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # any failure: report it, keep the active policy, retry later
            reason = type(error).__name__
            log.exception("%s: reconcile failed", self.key)
            self.runtime.metrics.errors.labels(reason).inc()
            await self.report("Warning", "ReconcileError", f"{reason}: {error}")
            await self.patch_status(
                {"message": f"reconcile failed: {error}"},
                degraded=(True, "ReconcileError", f"{reason}: {error}"),
            )
            return self.runtime.config.retry_seconds

    async def reconcile(self) -> float | None:
        meta = self.body.meta
        try:
            self.current = await asyncio.to_thread(
                self.runtime.custom.get_namespaced_custom_object,
                GROUP, VERSION, meta.namespace, PLURAL, meta.name,
            )  # fmt: skip
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None  # deleted; kopf stops this daemon
            raise
        status = self.status
        try:
            spec = parse_spec(self.current.get("spec"))
            profiles, issues, _ = eligible_profiles(self.nodes_now(), spec.selector)
        except (InvalidSpec, SelectorError) as error:
            self.runtime.metrics.errors.labels("InvalidSpec").inc()
            await self.report("Warning", "InvalidSpec", str(error))
            await self.patch_status(
                {"phase": "Failed", "message": f"invalid spec: {error}"},
                ready=(False, "InvalidSpec", str(error)),
                degraded=(True, "InvalidSpec", f"{error}; the active policy keeps serving"),
            )
            return None
        await self.report_node_issues(issues)
        store = self.store(spec)
        loaded = await asyncio.to_thread(store.load_active)
        active = loaded[1].meta["node_names"] if loaded else None
        desired = [p.name for p in profiles]
        request, request_raw = await self.pending_request(status)
        decision = plan(spec, active, desired, status.get("history") or [], request)
        self.update_gauges(loaded, desired)
        if decision.action == "train":
            await self.train(spec, store, profiles, decision)
            return 0
        if decision.action == "adapt":
            await self.adapt(spec, store, loaded, profiles, decision, request_raw)
            return 0
        await self.settle_status(decision, loaded, desired)
        return decision.retry_in

    # ----- actions --------------------------------------------------------------------------------
    async def train(self, spec: PolicySpec, store, profiles: list[NodeProfile], p: Plan) -> None:
        started = now_iso()
        await self.begin(p, f"initial training on {len(profiles)} nodes")
        try:
            result = await self.runtime.run_job(
                jobs.train_job, [n.to_dict() for n in profiles], spec.training
            )
        finally:
            self.runtime.metrics.in_progress.labels(self.key).set(0)
        version = await asyncio.to_thread(store.save, result.checkpoint())
        await asyncio.to_thread(store.set_active, version)
        record = adaptation_record(
            result.record | {"old_nodes": 0, "strategy": "initial"},
            version=version,
            attempt=1,
            trigger="initial",
            startedAt=started,
            finishedAt=now_iso(),
            nodeSetHash=node_set_hash([n.name for n in profiles]),
        )
        self.runtime.metrics.training_seconds.observe(result.record["adaptation_time"])
        self.runtime.metrics.candidate_score.labels(self.key).set(record["candidateScore"])
        await self.finish(record, version, None, [n.name for n in profiles])
        await self.report("Normal", "Trained", record["reason"] + f"; version {version}")

    async def adapt(self, spec, store, loaded, profiles, p: Plan, request_raw) -> None:
        backup_version, backup = loaded
        started = now_iso()
        names = [n.name for n in profiles]
        added = sorted(set(names) - set(backup.meta["node_names"]))
        removed = sorted(set(backup.meta["node_names"]) - set(names))
        change = f"{len(backup.meta['node_names'])} -> {len(names)} nodes"
        detail = (
            f"{change} (+{','.join(added) or '-'} -{','.join(removed) or '-'}) with {p.strategy}"
        )
        await self.begin(p, detail)
        weights = safetensors.torch.save({k: v.contiguous() for k, v in backup.tensors.items()})
        settings = attempt_settings(spec.adaptation, p)
        try:
            result = await self.runtime.run_job(
                jobs.adapt_job,
                weights,
                backup.meta,
                [n.to_dict() for n in profiles],
                settings,
                p.drill,
            )
        finally:
            self.runtime.metrics.in_progress.labels(self.key).set(0)
        version = await asyncio.to_thread(store.save, result.checkpoint())
        promoted = result.record["outcome"] == "promoted"
        if promoted:
            await asyncio.to_thread(store.set_active, version)
        record = adaptation_record(
            result.record,
            version=version,
            attempt=p.attempt,
            trigger=p.trigger,
            startedAt=started,
            finishedAt=now_iso(),
            nodeSetHash=node_set_hash(names),
            drill=p.drill or None,
        )
        self.observe_adaptation(record)
        active_names = names if promoted else backup.meta["node_names"]
        await self.finish(
            record,
            version if promoted else backup_version,
            backup_version,
            active_names,
            request=(request_raw, p, record) if request_raw else None,
        )
        if promoted:
            await self.report(
                "Normal", "Promoted", f"{change} with {p.strategy}: {record['reason']}"
            )
        else:
            serving = f"version {backup_version} keeps serving"
            await self.report(
                "Warning",
                "RolledBack",
                f"{change} with {p.strategy}: {record['reason']}; {serving}",
            )

    # ----- status ---------------------------------------------------------------------------------
    async def begin(self, p: Plan, message: str) -> None:
        self.runtime.metrics.in_progress.labels(self.key).set(1)
        self.runtime.metrics.set_phase(self.key, p.phase)
        await self.report("Normal", p.reason, message)
        await self.patch_status(
            {"phase": p.phase, "message": message},
            adapting=(True, p.reason, message),
        )

    async def finish(self, record, active_version, backup_version, active_names, request=None):
        status = self.status
        promoted = record["outcome"] == "promoted"
        phase = "Ready" if promoted else "RolledBack"
        patch: dict[str, Any] = {
            "phase": phase,
            "message": record["reason"],
            "lastAdaptation": record,
            "history": with_history(status.get("history"), record),
            "activeVersion": active_version,
            "nodes": list(active_names),
            "currentNodes": len(active_names),
        }
        if backup_version is not None:
            patch["backupVersion"] = backup_version
        if request is not None:
            raw, p, rec = request
            patch["adaptRequest"] = {
                "received": raw,
                "strategy": p.strategy,
                "reason": p.message,
                "state": f"done: {rec['outcome']} (version {rec['version']})",
            }
        self.runtime.metrics.set_phase(self.key, phase)
        self.runtime.metrics.active_version.labels(self.key).set(active_version)
        self.runtime.metrics.slots.labels(self.key).set(len(active_names))
        await self.patch_status(
            patch,
            ready=(True, "Serving", f"version {active_version} serves {len(active_names)} nodes"),
            adapting=(False, "Idle", record["reason"]),
            degraded=(not promoted, "RolledBack" if not promoted else "Healthy", record["reason"]),
        )

    async def settle_status(self, p: Plan, loaded, desired: list[str]) -> None:
        """Report a plan that needs no work (in sync, waiting, degraded) if it is news."""
        status = self.status
        version = loaded[0] if loaded else None
        nodes = loaded[1].meta["node_names"] if loaded else []
        patch: dict[str, Any] = {
            "phase": p.phase,
            "message": p.message,
            "eligibleNodes": len(desired),
        }
        if version is not None:
            patch |= {"activeVersion": version, "nodes": nodes, "currentNodes": len(nodes)}
        healthy = p.action == "in_sync"
        self.runtime.metrics.set_phase(self.key, p.phase)
        if healthy:
            self.runtime.metrics.last_success.labels(self.key).set(time.time())
        if all(status.get(k) == v for k, v in patch.items()) and not self._condition_stale(p):
            return
        if not healthy:
            await self.report(
                "Warning" if p.action == "degraded" else "Normal", p.reason, p.message
            )
        await self.patch_status(
            patch,
            ready=(version is not None, "Serving" if version else p.reason, p.message),
            adapting=(False, "Idle", p.message),
            degraded=(not healthy, "Healthy" if healthy else p.reason, p.message),
        )

    def _condition_stale(self, p: Plan) -> bool:
        conditions = {c.get("type"): c for c in self.status.get("conditions") or []}
        degraded = conditions.get("Degraded", {})
        want = "Healthy" if p.action == "in_sync" else p.reason
        return degraded.get("reason") != want

    async def patch_status(self, patch: dict, ready=None, adapting=None, degraded=None) -> None:
        status = self.status
        generation = self.generation
        patch = dict(patch) | {"observedGeneration": generation}
        conditions = list(status.get("conditions") or [])
        current = {c.get("type"): c for c in conditions}

        def keep(type_: str) -> tuple[bool, str, str]:
            c = current.get(type_, {})
            return c.get("status") == "True", c.get("reason", "Unknown"), c.get("message", "")

        patch["conditions"] = conditions_for(
            conditions,
            ready=ready or keep("Ready"),
            adapting=adapting or keep("Adapting"),
            degraded=degraded or keep("Degraded"),
            generation=generation,
        )
        await self.write_status(patch)

    # ----- helpers --------------------------------------------------------------------------------
    @property
    def status(self) -> Mapping:
        return self.current.get("status") or {}

    @property
    def generation(self) -> int | None:
        return self.current.get("metadata", {}).get("generation")

    def nodes_now(self) -> list[Mapping]:
        return [body for name in list(self.nodes) for body in self.nodes.get(name, [])]

    def store(self, spec: PolicySpec) -> CheckpointStore:
        meta = self.body.meta
        if spec.storage_backend == "filesystem":
            root = Path(spec.storage_path) / meta.namespace / meta.name
            return FilesystemStore(root, keep=spec.keep_versions)
        return ConfigMapStore(
            self.runtime.core, meta.namespace, meta.name, owner=self.body, keep=spec.keep_versions
        )

    async def pending_request(self, status: Mapping) -> tuple[dict | None, str | None]:
        """A manual adapt request not yet acknowledged in status.adaptRequest.received."""
        raw = (self.current.get("metadata", {}).get("annotations") or {}).get(ADAPT_REQUEST)
        if not raw or (status.get("adaptRequest") or {}).get("received") == raw:
            return None, None
        try:
            request = json.loads(raw)
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
            strategy = request.get("strategy") or "auto"
            if strategy != "auto":
                check_strategy(strategy)
        except (ValueError, UnknownStrategy) as error:
            await self.reject_request(raw, f"annotation {ADAPT_REQUEST} ignored: {error}")
            return None, None
        return request, raw

    async def reject_request(self, raw: str, message: str) -> None:
        await self.report("Warning", "InvalidAdaptRequest", message)
        await self.patch_status(
            {"adaptRequest": {"received": raw, "state": f"rejected: {message}"}}
        )

    async def report_node_issues(self, issues: list[NodeIssue]) -> None:
        for issue in issues:
            await self.report("Warning", "MalformedNodeData", issue.message)
        message = "; ".join(i.message for i in issues)
        status = self.status
        current = {c.get("type"): c for c in status.get("conditions") or []}.get("NodeData", {})
        want = ("False", "MalformedNodeData", message) if issues else ("True", "Valid", "")
        have = (current.get("status"), current.get("reason"), current.get("message", ""))
        if have != want:
            text = message or "all node data valid"
            conditions = condition(
                status.get("conditions"), "NodeData", not issues, want[1], text, self.generation
            )
            await self.write_status({"conditions": conditions})

    async def write_status(self, patch: dict) -> None:
        meta = self.body.meta
        self.current = await asyncio.to_thread(
            self.runtime.custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, meta.namespace, PLURAL, meta.name, {"status": patch},
        )  # fmt: skip

    async def report(self, type_: str, reason: str, message: str) -> None:
        """An Event on the MetaPolicy and a log line; repeated identical reports are dropped."""
        if self._reported.get(reason) == message:
            return
        self._reported[reason] = message
        (log.warning if type_ == "Warning" else log.info)("%s: %s: %s", self.key, reason, message)
        kopf.event(self.body, type=type_, reason=reason, message=message[:1024])

    def update_gauges(self, loaded, desired: list[str]) -> None:
        m, key = self.runtime.metrics, self.key
        m.nodes.labels(key).set(len(desired))
        if loaded:
            version, checkpoint = loaded
            names = checkpoint.meta["node_names"]
            m.slots.labels(key).set(len(names))
            m.active_version.labels(key).set(version)
            m.in_sync.labels(key).set(1.0 if sorted(names) == sorted(desired) else 0.0)
        else:
            m.in_sync.labels(key).set(0.0)

    def observe_adaptation(self, record: Mapping) -> None:
        m, key = self.runtime.metrics, self.key
        strategy, outcome = record.get("strategy", "unknown"), record["outcome"]
        m.adaptations.labels(key, strategy, outcome).inc()
        m.adaptation_seconds.labels(strategy).observe(record.get("adaptationTime", 0.0))
        for gauge, field_ in (
            (m.retention, "performanceRetention"),
            (m.candidate_score, "candidateScore"),
            (m.backup_score, "backupScore"),
        ):
            if field_ in record:
                gauge.labels(key).set(record[field_])
        if outcome == "rolled_back":
            reason = record.get("reason", "")
            if "minRetention" in reason:
                m.rollbacks.labels(key, "retention_below_threshold").inc()
            if "masked mode" in reason:
                m.rollbacks.labels(key, "worse_than_masked_backup").inc()


async def cleanup_store(runtime: Runtime, body: Mapping) -> None:
    """On deletion: the emulator has no garbage collector, and a filesystem store has none."""
    try:
        spec = parse_spec(body.get("spec"))
    except InvalidSpec:
        spec = parse_spec({})
    meta = body["metadata"]
    if spec.storage_backend == "filesystem":
        store: CheckpointStore = FilesystemStore(
            Path(spec.storage_path) / meta["namespace"] / meta["name"]
        )
    else:
        store = ConfigMapStore(runtime.core, meta["namespace"], meta["name"], owner=body)
    try:
        await asyncio.to_thread(store.delete_all)
    except CheckpointError as error:
        log.warning("%s/%s: store cleanup failed: %s", meta["namespace"], meta["name"], error)
        raise kopf.TemporaryError(f"store cleanup failed: {error}", delay=10) from error
