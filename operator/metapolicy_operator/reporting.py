"""What a MetaPolicy's controller tells the world: status patches, conditions, Events, metrics.

One typed `AdaptationRecord` in, the patches and counters out, so the controller reads as
triggers -> reconcile -> act and never builds a status dict itself. Status is a view of the
checkpoint store: `sync` rebuilds what status lacks from the store's records (after a crash
between the store write and the status patch) and refreshes every counter on each reconcile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
import kubernetes

from metapolicy.record import AdaptationRecord, Outcome
from metapolicy.store import record_key
from metapolicy_operator.inventory import NodeIssue
from metapolicy_operator.metrics import Metrics
from metapolicy_operator.planning import Plan
from metapolicy_operator.runtime import Runtime
from metapolicy_operator.status import HISTORY_LIMIT, condition, conditions_for, now_iso
from metapolicy_operator.workloads import ResolvedWorkload

GROUP, VERSION, PLURAL = "metapolicy.dev", "v1alpha1", "metapolicies"

log = logging.getLogger(__name__)

#: outcome -> (phase, Event type, Event reason)
OUTCOME_REPORT = {
    Outcome.PROMOTED: ("Ready", "Normal", "Promoted"),
    Outcome.ROLLED_BACK: ("RolledBack", "Warning", "RolledBack"),
    Outcome.KEPT_ZERO_SHOT: ("Ready", "Normal", "KeptZeroShot"),
    Outcome.INCONCLUSIVE: ("Paused", "Warning", "Inconclusive"),
    Outcome.ABORTED: ("RolledBack", "Normal", "Aborted"),
    Outcome.CANCELLED: ("Adapting", "Normal", "Cancelled"),
    Outcome.FAILED: ("Degraded", "Warning", "TrainingJobFailed"),
}


class StatusReporter:
    def __init__(self, runtime: Runtime, body: kopf.Body) -> None:
        self.runtime = runtime
        self.body = body  # kopf keeps a daemon's body live, but it can lag our own status writes
        self.current: Mapping = dict(body)  # the freshest object: re-read, or a patch response
        self.key = f"{body.meta.namespace}/{body.meta.name}"
        self._reported: dict[str, str] = {}

    @property
    def metrics(self) -> Metrics:
        return self.runtime.metrics

    @property
    def status(self) -> Mapping:
        return self.current.get("status") or {}

    @property
    def generation(self) -> int | None:
        return self.current.get("metadata", {}).get("generation")

    async def refresh(self) -> bool:
        """Re-read the MetaPolicy; False once it is gone."""
        meta = self.body.meta
        try:
            self.current = await asyncio.to_thread(
                self.runtime.custom.get_namespaced_custom_object,
                GROUP, VERSION, meta.namespace, PLURAL, meta.name,
            )  # fmt: skip
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    # ----- writing -------------------------------------------------------------------------
    async def write(self, patch: dict) -> None:
        meta = self.body.meta
        self.current = await asyncio.to_thread(
            self.runtime.custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, meta.namespace, PLURAL, meta.name, {"status": patch},
        )  # fmt: skip

    async def patch(self, patch: dict, **conditions: tuple[bool, str, str]) -> None:
        """Patch status; `conditions` (ready=, adapting=, degraded=, paused=) set those types
        and the others keep what they say."""
        current = {c.get("type"): c for c in self.status.get("conditions") or []}

        def keep(type_: str) -> tuple[bool, str, str]:
            c = current.get(type_, {})
            return c.get("status") == "True", c.get("reason", "Unknown"), c.get("message", "")

        patch = dict(patch) | {"observedGeneration": self.generation}
        patch["conditions"] = conditions_for(
            list(self.status.get("conditions") or []),
            ready=conditions.get("ready") or keep("Ready"),
            adapting=conditions.get("adapting") or keep("Adapting"),
            degraded=conditions.get("degraded") or keep("Degraded"),
            paused=conditions.get("paused") or keep("Paused"),
            generation=self.generation,
        )
        await self.write(patch)

    async def set_condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        """One condition on its own, written only when it changes."""
        have = {c.get("type"): c for c in self.status.get("conditions") or []}.get(type_, {})
        want = ("True" if ok else "False", reason, message)
        if (have.get("status"), have.get("reason"), have.get("message", "")) == want:
            return
        conditions = condition(
            self.status.get("conditions"), type_, ok, reason, message, self.generation
        )
        await self.write({"conditions": conditions})

    async def event(self, type_: str, reason: str, message: str) -> None:
        """An Event on the MetaPolicy and a log line; repeated identical reports are dropped."""
        if self._reported.get(reason) == message:
            return
        self._reported[reason] = message
        (log.warning if type_ == "Warning" else log.info)("%s: %s: %s", self.key, reason, message)
        kopf.event(self.body, type=type_, reason=reason, message=message[:1024])

    # ----- lifecycle -----------------------------------------------------------------------
    async def begin(self, plan: Plan, message: str) -> None:
        self.metrics.in_progress.labels(self.key).set(1)
        self.metrics.set_phase(self.key, plan.phase)
        await self.event("Normal", plan.reason, message)
        await self.patch(
            {"phase": plan.phase, "message": message}, adapting=(True, plan.reason, message)
        )

    async def recorded(
        self,
        record: AdaptationRecord,
        *,
        active_version: int | None,
        active_names: Sequence[str],
        backup_version: int | None = None,
        ack: dict | None = None,
        still_working: str | None = None,
    ) -> None:
        """A record the store now holds: status, metrics. `still_working`: the adaptation goes
        on (a fine-tune after a served zero-shot), say so instead of going idle."""
        phase, _, _ = OUTCOME_REPORT[record.outcome]
        data = record.to_json()
        patch: dict[str, Any] = {
            "phase": "Adapting" if still_working else phase,
            "message": still_working or record.reason,
            "lastAdaptation": data,
            "history": _merged(self.status.get("history"), [data]),
            "nodes": list(active_names),
            "currentNodes": len(active_names),
        } | (ack or {})
        if active_version is not None:
            patch["activeVersion"] = active_version
        if backup_version is not None:
            patch["backupVersion"] = backup_version
        self.count(record)
        failed = record.outcome in (Outcome.ROLLED_BACK, Outcome.ABORTED, Outcome.FAILED)
        serving = f"version {active_version} serves {len(active_names)} nodes"
        if still_working is None:
            self.metrics.in_progress.labels(self.key).set(0)
        self.metrics.set_phase(self.key, patch["phase"])
        if active_version is not None:
            self.metrics.active_version.labels(self.key).set(active_version)
        self.metrics.slots.labels(self.key).set(len(active_names))
        waiting = record.outcome is Outcome.INCONCLUSIVE
        await self.patch(
            patch,
            ready=(active_version is not None, "Serving", serving),
            adapting=(
                (True, "FineTuning", still_working)
                if still_working
                else (False, "Idle", record.reason)
            ),
            degraded=(failed, "RolledBack" if failed else "Healthy", record.reason),
            paused=(waiting, "Inconclusive" if waiting else "Running", record.reason),
        )

    async def announce(self, record: AdaptationRecord, detail: str) -> None:
        _, type_, reason = OUTCOME_REPORT[record.outcome]
        if record.trigger == "zero-shot":
            reason = "ZeroShot" + reason
        await self.event(type_, reason, f"{detail}: {record.reason}")

    def count(self, record: AdaptationRecord) -> None:
        """The metrics of one record (an initial training, or an adaptation stage)."""
        m, key = self.metrics, self.key
        if record.strategy == "initial":
            m.training_seconds.observe(record.adaptation_time)
        elif record.trigger == "zero-shot":  # a stage; the adaptation is counted when it ends
            m.zero_shot.labels(key, str(record.outcome)).inc()
            return
        elif record.trigger not in ("promote", "abort", "rollback-to"):
            m.adaptations.labels(key, record.strategy, str(record.outcome)).inc()
            m.adaptation_seconds.labels(record.strategy).observe(record.adaptation_time)
        if record.time_to_serve is not None:
            m.time_to_serve.labels(key).observe(record.time_to_serve)
        for gauge, value in (
            (m.retention, record.performance_retention),
            (m.candidate_score, record.candidate_score),
            (m.backup_score, record.backup_score),
        ):
            if value is not None:
                gauge.labels(key).set(value)
        for reason in record.rollback_reasons:
            m.rollbacks.labels(key, str(reason)).inc()

    async def settled(self, plan: Plan, version: int | None, nodes: Sequence[str]) -> None:
        """Report a plan that needs no work (in sync, waiting, paused, degraded) if it is news."""
        patch: dict[str, Any] = {"phase": plan.phase, "message": plan.message}
        if version is not None:
            patch |= {"activeVersion": version, "nodes": list(nodes), "currentNodes": len(nodes)}
        healthy = plan.action in ("in_sync", "paused")
        self.metrics.set_phase(self.key, plan.phase)
        if plan.action == "in_sync":
            self.metrics.last_success.labels(self.key).set(time.time())
        if all(self.status.get(k) == v for k, v in patch.items()) and not self._stale(plan):
            return
        if plan.action != "in_sync":
            await self.event(
                "Warning" if plan.action == "degraded" else "Normal", plan.reason, plan.message
            )
        paused = plan.phase == "Paused"
        await self.patch(
            patch,
            ready=(version is not None, "Serving" if version else plan.reason, plan.message),
            adapting=(False, "Idle", plan.message),
            degraded=(
                not healthy and not paused,
                "Healthy" if healthy or paused else plan.reason,
                plan.message,
            ),
            paused=(paused, plan.reason if paused else "Running", plan.message),
        )

    def _stale(self, plan: Plan) -> bool:
        conditions = {c.get("type"): c for c in self.status.get("conditions") or []}
        paused = plan.phase == "Paused"
        want_degraded = "Healthy" if plan.action in ("in_sync", "paused") or paused else plan.reason
        want_paused = plan.reason if paused else "Running"
        return (
            conditions.get("Degraded", {}).get("reason") != want_degraded
            or conditions.get("Paused", {}).get("reason") != want_paused
        )

    async def sync(
        self, records: Sequence[Mapping], active: int | None, nodes: Sequence[str], eligible: int
    ) -> None:
        """Status from the store: the records status lacks (marked recovered, counted, one
        Event), the active version, its nodes, and the counters."""
        have = {record_key(r) for r in self.status.get("history") or []}
        tail = list(records)[-HISTORY_LIMIT:]
        missing = [dict(r) | {"recovered": True} for r in tail if record_key(r) not in have]
        patch: dict[str, Any] = {"eligibleNodes": eligible}
        if active is not None:
            patch |= {"activeVersion": active, "nodes": list(nodes), "currentNodes": len(nodes)}
        if missing:
            history = _merged(self.status.get("history"), missing)
            patch |= {"history": history, "lastAdaptation": history[-1]}
            for record in missing:
                self.count(AdaptationRecord.from_json(record))
            versions = ", ".join(str(r.get("version")) for r in missing)
            await self.event(
                "Warning",
                "Recovered",
                f"status lacked the records of versions {versions}; rebuilt from the store",
            )
        if any(self.status.get(k) != v for k, v in patch.items()):
            await self.write(patch)

    async def workload(self, resolved: ResolvedWorkload) -> None:
        """status.workload, and WorkloadObserved for an observed source (why not yet)."""
        if self.status.get("workload") != resolved.status():
            await self.write({"workload": resolved.status()})
        condition_ = resolved.condition()
        if condition_ is not None:
            ok, reason, message = condition_
            if not ok:
                await self.event("Normal", "WorkloadNotObservedYet", message)
            await self.set_condition("WorkloadObserved", ok, reason, message)

    async def workload_unavailable(self, message: str) -> None:
        """spec.workload names a trace that cannot be used: nothing trains, the active
        version keeps serving."""
        self.metrics.errors.labels("WorkloadUnavailable").inc()
        await self.event("Warning", "WorkloadUnavailable", message)
        await self.patch(
            {"message": f"{message}; the active version keeps serving"},
            degraded=(True, "WorkloadUnavailable", message),
        )

    async def pod_sharing(self, others: Mapping[str, int]) -> None:
        """Condition PodSelector: False while pods this policy selects are selected by another
        MetaPolicy too; the placement server gives those pods neutral scores."""
        if not others:
            await self.set_condition("PodSelector", True, "Exclusive", "no pod is selected twice")
            return
        shared = ", ".join(f"{count} with {key}" for key, count in sorted(others.items()))
        message = (
            f"pods selected by this and another MetaPolicy ({shared}) get neutral scores "
            "until one podSelector or namespaces list no longer selects them"
        )
        await self.event("Warning", "PodsSelectedTwice", message)
        await self.set_condition("PodSelector", False, "SharedPods", message)

    async def node_issues(self, issues: list[NodeIssue]) -> None:
        for issue in issues:
            await self.event("Warning", "MalformedNodeData", issue.message)
        message = "; ".join(i.message for i in issues) or "all node data valid"
        reason = "MalformedNodeData" if issues else "Valid"
        await self.set_condition("NodeData", not issues, reason, message)

    def gauges(self, loaded, desired: Sequence[str]) -> None:
        m, key = self.metrics, self.key
        m.nodes.labels(key).set(len(desired))
        if loaded:
            version, checkpoint = loaded
            names = checkpoint.meta["node_names"]
            m.slots.labels(key).set(len(names))
            m.active_version.labels(key).set(version)
            m.in_sync.labels(key).set(1.0 if sorted(names) == sorted(desired) else 0.0)
        else:
            m.in_sync.labels(key).set(0.0)


def _merged(history: Sequence[Mapping] | None, records: Sequence[Mapping]) -> list[dict]:
    """History with `records` added or replaced (by identity), oldest first, bounded."""
    keys = {record_key(r) for r in records}
    kept = [dict(r) for r in history or [] if record_key(r) not in keys]
    kept += [dict(r) for r in records]
    kept.sort(key=lambda r: (r.get("finishedAt") or "", r.get("version") or 0))
    return kept[-HISTORY_LIMIT:]


__all__ = ["GROUP", "PLURAL", "VERSION", "StatusReporter", "now_iso"]
