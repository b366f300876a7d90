"""The placement server's Prometheus metrics (names are an interface: the dashboard and the
alerts of manifests/ query them).

Labels are bounded: `policy` is namespace/name (one per MetaPolicy, "" when no single policy
applies), `verb`, `outcome`, `reason`, `mode` and `kind` come from the fixed tuples below.

With several worker processes (`--workers N`), every process writes its values to files in
`PROMETHEUS_MULTIPROC_DIR` and any process answers a scrape with the sum over all of them
(prometheus-client's multiprocess mode): counters and histograms add up, the served version is
the most recently set one, the cache gauges the worst live process.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

VERBS = ("prioritize", "filter")
OUTCOMES = ("policy", "neutral", "fallback", "shadow", "bad_request")
FALLBACK_REASONS = (
    "no_active_version",
    "checkpoint_unreadable",
    "unparsable_pod",
    "unparsable_node",
    "internal_error",
    "over_budget",
    "no_slot",
    "ambiguous_policy",
)
MODES = ("active", "shadow")
CACHE_KINDS = ("nodes", "pods")
# Down to 0.5 ms: a prioritize call at 100 candidates takes about 1-2 ms.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class ServeMetrics:
    """One set per server process; tests build their own registry each."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiprocess = multiprocess_enabled()
        self.registry = r = registry or CollectorRegistry()
        self.requests = Counter(
            "metapolicy_serve_requests",
            "Extender requests by verb and outcome (policy: the policy's scores; neutral: all "
            "equal; fallback: heuristic scores; shadow: neutral, the choice recorded)",
            ["verb", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "metapolicy_serve_request_duration_seconds",
            "Time from request received to answer ready",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.served_version = Gauge(
            "metapolicy_served_version",
            "Checkpoint version the server uses for the policy (0: none)",
            ["policy"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.fallbacks = Counter(
            "metapolicy_serve_fallbacks",
            "Requests (or, for no_slot, nodes) answered without the policy, by reason",
            ["policy", "reason"],
            registry=r,
        )
        self.decisions = Counter(
            "metapolicy_serve_decisions",
            "Placements decided by a policy, in active or shadow mode",
            ["policy", "mode"],
            registry=r,
        )
        self.shadow_bound = Counter(
            "metapolicy_shadow_bound",
            "Pods with a shadow decision that were later bound to a node",
            ["policy"],
            registry=r,
        )
        self.shadow_agreements = Counter(
            "metapolicy_shadow_agreements",
            "Of those, pods bound to the node the shadow policy chose",
            ["policy"],
            registry=r,
        )
        self.cache_objects = Gauge(
            "metapolicy_serve_cache_objects",
            "Objects in the server's cache",
            ["kind"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.sync_age = Gauge(
            "metapolicy_serve_cache_sync_age_seconds",
            "Seconds since the cache's last successful list or watch event (worst watch)",
            registry=r,
            multiprocess_mode="livemax",
        )
        for verb in VERBS:
            for outcome in OUTCOMES:
                self.requests.labels(verb, outcome)
            self.duration.labels(verb)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels("", reason)
        for kind in CACHE_KINDS:
            self.cache_objects.labels(kind)

    def start(self, policy: str) -> None:
        """Create a policy's series at 0, so rate() and increase() see its first event."""
        self.served_version.labels(policy).set(0)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(policy, reason)
        for mode in MODES:
            self.decisions.labels(policy, mode)
        self.shadow_bound.labels(policy)
        self.shadow_agreements.labels(policy)

    def forget(self, policy: str) -> None:
        """Drop a deleted policy's series (a no-op for files in multiprocess mode)."""
        for metric in (
            self.served_version,
            self.fallbacks,
            self.decisions,
            self.shadow_bound,
            self.shadow_agreements,
        ):
            for labels in list(metric._metrics):  # prometheus-client has no public lister
                if labels[0] == policy:
                    metric.remove(*labels)

    def render(self) -> tuple[bytes, str]:
        """(exposition body, content type): this process, or every worker in multiprocess mode."""
        if self.multiprocess:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
