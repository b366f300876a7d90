"""One controller per MetaPolicy: triggers -> reconcile -> act.

Triggers are node changes (debounced by the settle window), spec changes and manual requests.
Reconcile reads only stored state (the spec, the eligible nodes, the checkpoint store's active
version and records) and rebuilds status from it, so a restarted operator picks up where the
last one stopped, whatever it was writing when it died. Acting is one training, one
adaptation or one manual request at a time; PyTorch work runs in worker processes, and an
adaptation serves its zero-shot candidate before it fine-tunes.

Every write follows one order: the store first (the candidate with its record, then the active
pointer), then status, then the Event. `faults.boundary` marks each step for the crash tests.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kopf

from metapolicy.checkpoint import stored_record
from metapolicy.cluster import NodeProfile
from metapolicy.record import AdaptationRecord, Outcome, Reason
from metapolicy.store import CheckpointError, CheckpointStore, tensor_bytes
from metapolicy_operator import jobs, requests
from metapolicy_operator.faults import boundary
from metapolicy_operator.inventory import SelectorError, eligible_profiles
from metapolicy_operator.planning import Plan, attempt_settings, node_set_hash, plan, undecided
from metapolicy_operator.reporting import StatusReporter
from metapolicy_operator.runtime import Runtime
from metapolicy_operator.spec import InvalidSpec, PolicySpec, parse_spec
from metapolicy_operator.status import record_time
from metapolicy_operator.stores import policy_store
from metapolicy_operator.training_jobs import JobRunner, TrainingJobFailed
from metapolicy_operator.workloads import (
    ResolvedWorkload,
    WorkloadUnavailable,
    resolve_workload,
    with_workload,
)

log = logging.getLogger(__name__)

WATCHED_ANNOTATIONS = (
    requests.ADAPT_REQUEST,
    requests.PROMOTE,
    requests.ABORT,
    requests.ROLLBACK_TO,
)


class Refused(Exception):
    """A manual request that cannot be carried out; the message says why."""


class PolicyController:
    def __init__(self, runtime: Runtime, body: kopf.Body, nodes: kopf.Index) -> None:
        self.runtime = runtime
        self.body = body
        self.nodes = nodes
        self.report = StatusReporter(runtime, body)
        self.key = self.report.key
        self.wake = asyncio.Event()
        self.nodes_changed = asyncio.Event()
        self.last_change = time.monotonic()
        self.seen: tuple[Any, ...] = ()
        self.workload: ResolvedWorkload | None = None  # what the current action learns from
        runtime.metrics.start(self.key)

    # ----- triggers ---------------------------------------------------------------------------
    def nudge(self) -> None:
        """A node changed: reconcile after the settle window has been quiet."""
        self.last_change = time.monotonic()
        self.nodes_changed.set()
        self.wake.set()

    def observe(self, body: Mapping) -> None:
        """Wake on spec changes and manual requests, not on our own status patches."""
        meta = body.get("metadata", {})
        annotations = meta.get("annotations") or {}
        seen = (meta.get("generation"), *(annotations.get(a) for a in WATCHED_ANNOTATIONS))
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

    def settled(self, read_at: float, spec: PolicySpec) -> bool:
        """Whether the node set read at ``read_at`` had been quiet for the settle window.

        `settle` runs before each reconcile, but a burst that begins after it ended and before
        the reconcile read the nodes (a reconcile right after a training or a spec change) was
        read half-applied: one adaptation to a partial node set, then another."""
        return self.last_change <= read_at - spec.settle_seconds

    # ----- reconcile --------------------------------------------------------------------------
    async def reconcile_safely(self) -> float | None:
        try:
            return await self.reconcile()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # any failure: report it, keep the active policy, retry later
            reason = type(error).__name__
            log.exception("%s: reconcile failed", self.key)
            self.runtime.metrics.errors.labels(reason).inc()
            self.runtime.metrics.in_progress.labels(self.key).set(0)
            await self.report.event("Warning", "ReconcileError", f"{reason}: {error}")
            await self.report.patch(
                {"message": f"reconcile failed: {error}"},
                degraded=(True, "ReconcileError", f"{reason}: {error}"),
            )
            return self.runtime.config.retry_seconds

    async def reconcile(self) -> float | None:
        if not await self.report.refresh():
            return None  # deleted; kopf stops this daemon
        try:
            spec = parse_spec(self.report.current.get("spec"))
            read_at = time.monotonic()
            profiles, issues, _ = eligible_profiles(self.nodes_now(), spec.selector)
        except (InvalidSpec, SelectorError) as error:
            await self.invalid_spec(error)
            return None
        await self.report.node_issues(issues)
        await self.report.pod_sharing(self.runtime.recorder.sharing(self.key))
        store = self.store(spec)
        desired = [p.name for p in profiles]
        records = await asyncio.to_thread(store.history)
        loaded = await self.complete_promotion(store, records)
        active = loaded[1].meta["node_names"] if loaded else None
        await self.report.sync(records, loaded[0] if loaded else None, active or [], len(desired))
        self.report.gauges(loaded, desired)
        try:
            workload = await asyncio.to_thread(resolve_workload, spec, store)
        except WorkloadUnavailable as error:
            await self.report.workload_unavailable(str(error))
            return self.runtime.config.retry_seconds
        await self.report.workload(workload)
        spec = with_workload(spec, workload)
        self.workload = workload

        pending, malformed = requests.pending(self.report.current)
        for annotation, raw, error in malformed:
            await self.refuse(annotation, raw, str(error))
        control = next((r for r in pending if r.kind != "adapt"), None)
        if control is not None:
            await self.control(control, spec, store, loaded, records, profiles)
            return 0  # look again: the active version may have changed
        adapt_request = next((r for r in pending if r.kind == "adapt"), None)
        decision = plan(
            spec,
            active,
            desired,
            records,
            None
            if adapt_request is None
            else {
                "strategy": adapt_request.strategy,
                "reason": adapt_request.reason,
                "drill": adapt_request.drill,
            },
        )
        if decision.action in ("train", "adapt") and not self.settled(read_at, spec):
            return 0  # a node changed during this reconcile: settle, then act on the final set
        if decision.action == "train":
            await self.train(spec, store, profiles, decision)
            return 0
        if decision.action == "adapt":
            await self.adapt(spec, store, loaded, profiles, decision, adapt_request)
            return 0
        await self.report.settled(decision, loaded[0] if loaded else None, active or [])
        return decision.retry_in

    async def complete_promotion(self, store: CheckpointStore, records: Sequence[Mapping]):
        """The active version is the one of the newest promoted record: if the operator stopped
        after storing a promoted candidate but before moving the pointer, move it now, so the
        adaptation is not run twice. Returns the active (version, checkpoint), or None."""
        promoted = [r for r in records if r.get("outcome") == "promoted" and r.get("version")]
        if promoted:
            want = promoted[-1]["version"]
            pointer = await asyncio.to_thread(store.active)
            if pointer != want:
                try:
                    await asyncio.to_thread(store.set_active, want)
                except CheckpointError as error:
                    log.warning("%s: cannot make version %s active: %s", self.key, want, error)
                else:
                    await self.report.event(
                        "Warning",
                        "PromotionCompleted",
                        f"version {want} was promoted but the pointer still named {pointer}: "
                        "the operator stopped in between; it is active now",
                    )
        return await asyncio.to_thread(store.load_active)

    async def invalid_spec(self, error: Exception) -> None:
        self.runtime.metrics.errors.labels("InvalidSpec").inc()
        await self.report.event("Warning", "InvalidSpec", str(error))
        await self.report.patch(
            {"phase": "Failed", "message": f"invalid spec: {error}"},
            ready=(False, "InvalidSpec", str(error)),
            degraded=(True, "InvalidSpec", f"{error}; the active policy keeps serving"),
        )

    # ----- training and adaptation ------------------------------------------------------------
    async def train(
        self, spec: PolicySpec, store: CheckpointStore, profiles: list[NodeProfile], p: Plan
    ) -> None:
        names = [n.name for n in profiles]
        started, clock = record_time(), time.monotonic()
        await self.report.begin(p, f"initial training on {len(profiles)} nodes")
        try:
            if spec.training_backend == "job":
                payload = {"policy": self.body.meta.name, "nodes": [n.to_dict() for n in profiles]}
                output = await self.job_runner(spec).run("train", payload)
                result = jobs.JobResult(output.weights, output.meta, output.result["record"])
            else:
                result = await self.runtime.run_job(
                    jobs.train_job, [n.to_dict() for n in profiles], spec.training
                )
        except TrainingJobFailed as error:
            where = {"attempt": p.attempt, "node_set_hash": node_set_hash(names)}
            await self.job_failed(store, error, "initial", where, None, [])
            return
        finally:
            self.runtime.metrics.in_progress.labels(self.key).set(0)
        record = result.outcome_record.with_context(
            **self.workload_fields(),
            trigger="initial",
            attempt=1,
            started_at=started,
            finished_at=record_time(),
            node_set_hash=node_set_hash(names),
            time_to_serve=time.monotonic() - clock,
        )
        version = await self.store_stage(store, result, record, "train")
        await self.report.recorded(record.with_context(version=version), active_version=version,
                                   active_names=names)  # fmt: skip
        boundary("after-status", "train")
        await self.report.announce(record, f"version {version} serves {len(names)} nodes")
        boundary("after-event", "train")

    async def adapt(
        self,
        spec: PolicySpec,
        store: CheckpointStore,
        loaded,
        profiles: list[NodeProfile],
        p: Plan,
        request: requests.Request | None,
    ) -> None:
        """Serve first: validate the zero-shot candidate and serve it if it passes, then
        fine-tune in the background (cancelled by a node change) and decide again."""
        backup_version, backup = loaded
        old_names, names = backup.meta["node_names"], [n.name for n in profiles]
        added = sorted(set(names) - set(old_names))
        removed = sorted(set(old_names) - set(names))
        change = f"{len(old_names)} -> {len(names)} nodes"
        moved = f"+{','.join(added) or '-'} -{','.join(removed) or '-'}"
        detail = f"{change} ({moved}) with {p.strategy}"
        await self.report.begin(p, detail)
        settings = attempt_settings(spec.adaptation, p)
        weights = tensor_bytes(backup.tensors)
        context = dict(
            **self.workload_fields(),
            attempt=p.attempt,
            started_at=record_time(),
            node_set_hash=node_set_hash(names),
            parent_version=backup_version,
            drill=p.drill or None,
        )
        clock = time.monotonic()
        try:
            first = await self.runtime.run_job(
                jobs.zero_shot_job, weights, backup.meta, [n.to_dict() for n in profiles],
                settings, p.drill,
            )  # fmt: skip
            refining = settings.budget_steps > 0 or (
                first.outcome_record.strategy == "knowledge_distillation" and bool(added)
            )
            # Without a fine-tune to follow, the zero-shot decision is the adaptation's own.
            zero = first.outcome_record.with_context(
                trigger="zero-shot" if refining else p.trigger, finished_at=record_time(), **context
            )
            served = zero.outcome is Outcome.PROMOTED
            if served:
                zero = zero.with_context(time_to_serve=time.monotonic() - clock)
            zero_version = await self.store_stage(store, first, zero, "zero-shot")
            zero = zero.with_context(version=zero_version)
            active_version, active_names = (
                (zero_version, names) if served else (backup_version, old_names)
            )
            working = None
            if refining:
                working = f"version {active_version} serves; fine-tuning {change} in the background"
            await self.report.recorded(
                zero,
                active_version=active_version,
                active_names=active_names,
                backup_version=backup_version,
                ack=None if refining else self.ack(request, zero, active_version),
                still_working=working,
            )
            boundary("after-status", "zero-shot")
            await self.report.announce(zero, f"{detail}, zero-shot")
            boundary("after-event", "zero-shot")
            if not refining:
                return
            cancel_dir = tempfile.mkdtemp(prefix="metapolicy-cancel-")
            try:
                cancel = jobs.Cancellation(str(Path(cancel_dir) / "cancel"))
                if spec.training_backend == "job":
                    payload = {
                        "policy": self.body.meta.name,
                        "nodes": [n.to_dict() for n in profiles],
                        "backupVersion": backup_version,
                        "zeroShotVersion": zero_version,
                        "strategy": settings.strategy,
                        "seed": settings.seed,
                    }
                    work = self.fine_tune_in_job(spec, payload, cancel, weights, backup, first, p)
                else:
                    work = self.runtime.run_job(
                        jobs.refine_job, weights, backup.meta, first, settings, p.drill, cancel
                    )
                final = await self.run_cancellable(spec, names, cancel, work)
            finally:
                shutil.rmtree(cancel_dir, ignore_errors=True)
        except TrainingJobFailed as error:
            where = context | {"strategy": p.strategy}
            await self.job_failed(store, error, p.trigger, where, active_version, active_names)
            return
        finally:
            self.runtime.metrics.in_progress.labels(self.key).set(0)
        if final is None:
            await self.cancelled(store, zero, p, context, active_version, active_names, request)
            return
        record = final.outcome_record.with_context(
            trigger=p.trigger, finished_at=record_time(), **context
        )
        promoted = record.outcome is Outcome.PROMOTED
        if promoted:
            record = record.with_context(time_to_serve=time.monotonic() - clock)
        elif served:
            record = record.with_context(time_to_serve=zero.time_to_serve)
        version = await self.store_stage(store, final, record, "fine-tune")
        record = record.with_context(version=version)
        if promoted:
            active_version, active_names = version, names
        await self.report.recorded(
            record,
            active_version=active_version,
            active_names=active_names,
            backup_version=backup_version,
            ack=self.ack(request, record, active_version),
        )
        boundary("after-status", "fine-tune")
        serving = f"version {active_version} serves"
        await self.report.announce(record, f"{detail}; {serving}")
        boundary("after-event", "fine-tune")

    async def store_stage(
        self, store: CheckpointStore, result: jobs.JobResult, record: AdaptationRecord, stage: str
    ) -> int:
        """The candidate with its record in one write, then the pointer if it serves."""
        version = await asyncio.to_thread(store.save, result.checkpoint(record))
        boundary("after-save", stage)
        if record.outcome is Outcome.PROMOTED:
            await asyncio.to_thread(store.set_active, version)
            boundary("after-activate", stage)
        return version

    async def fine_tune_in_job(self, spec, payload, cancel, weights, backup, first, p: Plan):
        """Fine-tune in a training Job, then validate and decide here, in a worker."""
        output = await self.job_runner(spec).run("fine-tune", payload, cancel)
        if output is None:
            return None
        settings = attempt_settings(spec.adaptation, p)
        return await self.runtime.run_job(
            jobs.judge_job, weights, backup.meta, first, output.weights, output.meta,
            output.result, settings, p.drill,
        )  # fmt: skip

    def job_runner(self, spec: PolicySpec) -> JobRunner:
        return JobRunner(
            self.runtime.api, self.report.current, spec.training_job, self.runtime.config.job_image
        )

    async def job_failed(self, store, error, trigger, context, active_version, active_names):
        """A training Job that failed, ran past its deadline or was deleted: recorded (it
        counts as a failed attempt, retried after the backoff), nothing else changes."""
        record = AdaptationRecord(
            outcome=Outcome.FAILED,
            reason=f"{error}; the serving version is unchanged and the attempt is retried",
            reason_codes=(Reason.TRAINING_JOB_FAILED,),
            strategy=context.get("strategy", "initial"),
            trigger=trigger,
            finished_at=record_time(),
            **{k: v for k, v in context.items() if k != "strategy"},
        )
        await asyncio.to_thread(store.append_record, record.to_json())
        await self.report.recorded(record, active_version=active_version, active_names=active_names)
        await self.report.announce(record, "training Job")

    async def run_cancellable(self, spec: PolicySpec, target: Sequence[str], cancel, work):
        """Await `work` (a worker job or a training Job); if the eligible node set moves away
        from `target` meanwhile, ask it to stop (it returns None) so the next adaptation
        starts from what serves now."""
        job = asyncio.ensure_future(work)
        try:
            while not job.done():
                self.nodes_changed.clear()
                change = asyncio.ensure_future(self.nodes_changed.wait())
                try:
                    await asyncio.wait({job, change}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    change.cancel()
                if job.done():
                    break
                try:
                    now, _, _ = eligible_profiles(self.nodes_now(), spec.selector)
                except SelectorError:
                    continue
                if sorted(n.name for n in now) != sorted(target):
                    log.info("%s: the node set changed during the fine-tune; cancelling", self.key)
                    cancel.request()
            return await job
        except asyncio.CancelledError:  # the operator stops: so does the worker, soon
            cancel.request()
            job.cancel()
            raise

    async def cancelled(self, store, zero, p: Plan, context, active_version, active_names, request):
        record = AdaptationRecord(
            outcome=Outcome.CANCELLED,
            reason=f"the node set changed during the fine-tune; version {active_version} keeps "
            "serving and the next adaptation starts from it",
            reason_codes=(Reason.SUPERSEDED,),
            strategy=zero.strategy,
            old_nodes=zero.old_nodes,
            new_nodes=zero.new_nodes,
            trigger=p.trigger,
            finished_at=record_time(),
            **context,
        )
        await asyncio.to_thread(store.append_record, record.to_json())
        await self.report.recorded(
            record,
            active_version=active_version,
            active_names=active_names,
            ack=self.ack(request, record, active_version),
        )
        await self.report.announce(record, "fine-tune")

    @staticmethod
    def ack(
        request: requests.Request | None, record: AdaptationRecord, serving: int | None = None
    ) -> dict | None:
        """The request's answer: what the whole adaptation did (a served zero-shot candidate
        is a promotion even when the fine-tuned one was kept out)."""
        if request is None:
            return None
        if serving is not None and serving != record.parent_version:
            state = f"done: promoted (version {serving})"
        else:
            state = f"done: {record.outcome} (version {record.version})"
        return requests.acknowledgement(
            request.annotation, request.raw, state, strategy=record.strategy, reason=request.reason
        )

    # ----- manual requests --------------------------------------------------------------------
    async def control(self, request, spec, store, loaded, records, profiles) -> None:
        """promote, abort or rollback-to: no training, seconds at most."""
        names = [n.name for n in profiles]
        active_version = loaded[0] if loaded else None
        try:
            if request.kind == "abort":
                record, serving = self.abort(records, names), loaded
            else:
                record, serving = await self.activate(request, store, records, names, loaded)
        except Refused as error:
            await self.refuse(request.annotation, request.raw, str(error))
            return
        if record.trigger == "abort":
            await asyncio.to_thread(store.append_record, record.to_json())
        serving_version = serving[0] if serving else None
        serving_names = serving[1].meta["node_names"] if serving else []
        state = f"done: {record.outcome} (version {record.version})"
        await self.report.recorded(
            record,
            active_version=serving_version,
            active_names=serving_names,
            backup_version=active_version if serving_version != active_version else None,
            ack=requests.acknowledgement(request.annotation, request.raw, state),
        )
        await self.report.set_condition("ManualRequest", True, "Done", record.reason)
        await self.report.announce(record, f"{request.annotation}={request.raw}")

    async def activate(self, request, store, records, names, loaded):
        """promote or rollback-to: make a stored version active."""
        version = request.version
        try:
            checkpoint = await asyncio.to_thread(store.load, version)
        except CheckpointError as error:
            raise Refused(f"version {version} cannot be served: {error}") from None
        nodes = checkpoint.meta["node_names"]
        made = stored_record(checkpoint.meta)
        if request.kind == "promote" and sorted(nodes) != sorted(names):
            raise Refused(
                f"version {version} was made for another node set ({len(nodes)} nodes); "
                "use metapolicy.dev/rollback-to to serve it as the backup of an adaptation"
            )
        if request.kind == "rollbackTo" and not any(
            r.get("version") == version and r.get("outcome") == "promoted" for r in records
        ):
            raise Refused(f"version {version} never served; only a previously active version")
        trigger, code = (
            ("promote", Reason.MANUAL_PROMOTE)
            if request.kind == "promote"
            else ("rollback-to", Reason.ROLLBACK_TO)
        )
        at = record_time()
        record = AdaptationRecord(
            outcome=Outcome.PROMOTED,
            reason=f"version {version} made active by {request.annotation}",
            reason_codes=(code,),
            strategy=made.strategy if made else "initial",
            old_nodes=len(loaded[1].meta["node_names"]) if loaded else 0,
            new_nodes=len(nodes),
            version=version,
            parent_version=loaded[0] if loaded else None,
            trigger=trigger,
            started_at=at,
            finished_at=at,
            node_set_hash=node_set_hash(nodes),
        )
        # The record first: the newest promoted record names the active version, so a crash
        # before the pointer moves is completed by the next reconcile (complete_promotion).
        promoted = [r for r in records if r.get("outcome") == "promoted"]
        repeated = promoted and (promoted[-1].get("version"), promoted[-1].get("trigger")) == (
            version,
            trigger,
        )
        if not repeated:  # a request repeated after a crash adds no second record
            await asyncio.to_thread(store.append_record, record.to_json())
        await asyncio.to_thread(store.set_active, version)
        return record, (version, checkpoint)

    def abort(self, records, names) -> AdaptationRecord:
        waiting = undecided(records, node_set_hash(names))
        if waiting is None:
            raise Refused("no inconclusive candidate waits for a decision at this node set")
        at = record_time()
        return AdaptationRecord(
            outcome=Outcome.ABORTED,
            reason=f"inconclusive candidate version {waiting.get('version')} aborted by a user",
            reason_codes=(Reason.MANUAL_ABORT,),
            strategy=waiting.get("strategy", "zero_padding"),
            old_nodes=waiting.get("oldNodes", 0),
            new_nodes=waiting.get("newNodes", 0),
            version=waiting.get("version"),
            attempt=waiting.get("attempt"),
            trigger="abort",
            started_at=at,
            finished_at=at,
            node_set_hash=waiting.get("nodeSetHash"),
        )

    async def refuse(self, annotation: str, raw: str, message: str) -> None:
        reason = "InvalidAdaptRequest" if annotation == requests.ADAPT_REQUEST else "RequestRefused"
        await self.report.event("Warning", reason, message)
        await self.report.set_condition("ManualRequest", False, "Refused", message)
        await self.report.write(requests.acknowledgement(annotation, raw, f"rejected: {message}"))

    # ----- helpers ----------------------------------------------------------------------------
    def workload_fields(self) -> dict[str, Any]:
        """The record's workload fields: which source the candidate learned from, how many
        tasks it had."""
        if self.workload is None:
            return {}
        return {"workload_source": self.workload.source, "workload_tasks": self.workload.tasks}

    def nodes_now(self) -> list[Mapping]:
        return [body for name in list(self.nodes) for body in self.nodes.get(name, [])]

    def store(self, spec: PolicySpec) -> CheckpointStore:
        return policy_store(self.runtime.core, self.body, spec)


async def cleanup_store(runtime: Runtime, body: Mapping) -> None:
    """On deletion: the emulator has no garbage collector, and a filesystem store has none."""
    try:
        spec = parse_spec(body.get("spec"))
    except InvalidSpec:
        spec = parse_spec({})
    store = policy_store(runtime.core, body, spec)
    try:
        await asyncio.to_thread(store.delete_all)
    except CheckpointError as error:
        meta = body["metadata"]
        log.warning("%s/%s: store cleanup failed: %s", meta["namespace"], meta["name"], error)
        raise kopf.TemporaryError(f"store cleanup failed: {error}", delay=10) from error
