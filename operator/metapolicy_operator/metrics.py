"""Prometheus metrics and the /metrics + /healthz endpoint.

Label cardinality is bounded: `policy` is namespace/name (one per MetaPolicy, removed when the
policy is deleted), `strategy`, `outcome`, `phase` and `reason` come from fixed enumerations.
The server runs on the operator's event loop, which training never blocks, so a slow scrape
means the loop is in trouble; that is what /healthz is for as well.
"""

from __future__ import annotations

import contextlib

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from metapolicy.record import ROLLBACK_REASONS, Outcome
from metapolicy.strategies import STRATEGIES

PHASES = (
    "Pending", "Training", "Ready", "Adapting", "RolledBack", "Failed", "Degraded", "Paused"
)  # fmt: skip
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """One registry per operator (tests build their own, so runs never share counters)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()

        def per_policy(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["policy"], registry=r)

        self.nodes = per_policy("metapolicy_eligible_nodes", "Eligible nodes per policy")
        self.slots = per_policy("metapolicy_policy_slots", "Node slots of the active policy")
        self.in_sync = per_policy(
            "metapolicy_policy_in_sync",
            "1 when the active policy's node set equals the eligible node set",
        )
        self.retention = per_policy(
            "metapolicy_retention_ratio", "Measured retention of the last adaptation"
        )
        self.candidate_score = per_policy(
            "metapolicy_candidate_score", "Normalised score S of the last candidate"
        )
        self.backup_score = per_policy(
            "metapolicy_backup_score", "Normalised score S of the backup on its own cluster"
        )
        self.active_version = per_policy("metapolicy_active_version", "Checkpoint version serving")
        self.in_progress = per_policy(
            "metapolicy_adaptations_in_progress", "Trainings and adaptations running"
        )
        self.last_success = per_policy(
            "metapolicy_last_reconcile_timestamp_seconds",
            "When the policy last reached a consistent state",
        )
        self.phase = Gauge(
            "metapolicy_phase", "1 for the policy's current phase", ["policy", "phase"], registry=r
        )
        self.adaptations = Counter(
            "metapolicy_adaptations_total",
            "Finished adaptations",
            ["policy", "strategy", "outcome"],
            registry=r,
        )
        self.zero_shot = Counter(
            "metapolicy_zero_shot_decisions_total",
            "Zero-shot candidates (resized, not yet fine-tuned) by validation outcome",
            ["policy", "outcome"],
            registry=r,
        )
        self.rollbacks = Counter(
            "metapolicy_rollbacks_total",
            "Rolled-back adaptations",
            ["policy", "reason"],
            registry=r,
        )
        self.adaptation_seconds = Histogram(
            "metapolicy_adaptation_duration_seconds",
            "Adaptation wall time (resize + fine-tune + validation)",
            ["strategy"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.time_to_serve = Histogram(
            "metapolicy_time_to_serve_seconds",
            "From the start of an adaptation to its candidate being active (zero-shot first)",
            ["policy"],
            buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
            registry=r,
        )
        self.training_seconds = Histogram(
            "metapolicy_training_duration_seconds",
            "Initial training wall time",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.node_events = Counter(
            "metapolicy_node_events_total", "Node watch events", ["type"], registry=r
        )
        self.errors = Counter(
            "metapolicy_reconcile_errors_total", "Reconcile errors", ["reason"], registry=r
        )
        self._per_policy = (
            self.nodes, self.slots, self.in_sync, self.retention, self.candidate_score,
            self.backup_score, self.active_version, self.in_progress, self.last_success,
        )  # fmt: skip

    def start(self, policy: str) -> None:
        """Create a policy's counter series at 0, so increase() also sees its first event."""
        for strategy in STRATEGIES:
            for outcome in Outcome:
                self.adaptations.labels(policy, strategy, str(outcome))
        for reason in ROLLBACK_REASONS:
            self.rollbacks.labels(policy, str(reason))
        for outcome in (Outcome.PROMOTED, Outcome.ROLLED_BACK, Outcome.INCONCLUSIVE):
            self.zero_shot.labels(policy, str(outcome))

    def set_phase(self, policy: str, phase: str) -> None:
        for name in PHASES:
            self.phase.labels(policy, name).set(1.0 if name == phase else 0.0)

    def forget(self, policy: str) -> None:
        """Drop every series of a deleted policy so label sets do not accumulate."""
        for metric in self._per_policy:
            with contextlib.suppress(KeyError):
                metric.remove(policy)
        for name in PHASES:
            with contextlib.suppress(KeyError):
                self.phase.remove(policy, name)
        with contextlib.suppress(KeyError):
            self.time_to_serve.remove(policy)
        for metric in (self.adaptations, self.rollbacks, self.zero_shot):
            for labels in list(metric._metrics):  # prometheus-client has no public lister
                if labels[0] == policy:
                    metric.remove(*labels)


async def serve(metrics: Metrics, port: int, healthy, host: str = "0.0.0.0") -> web.AppRunner:
    """Start /metrics and /healthz; `healthy()` -> (ok, message). Returns the runner to stop."""

    async def scrape(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        ok, message = healthy()
        return web.Response(status=200 if ok else 503, text=message + "\n")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
