"""Plumbing for the benchmarks that run `metapolicy run` against the embedded API server.

The processes are the e2e harness's (`e2e.cluster.environment`); this module adds what a
measurement needs on top: policies created directly, the status read without the e2e
expectations machinery, the eligible node set computed by the operator's own rules from the
live Node objects, and the stored checkpoint read back through the operator's store.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import uncommitted_changes
from e2e.cluster import Environment, Kube, environment
from e2e.nodes import SCENARIO_LABEL
from metapolicy.checkpoint import policy_from_checkpoint
from metapolicy.cluster import NodeProfile
from metapolicy.store import CheckpointError
from metapolicy_operator.configmap_store import ConfigMapStore
from metapolicy_operator.inventory import eligible_profiles

GROUP, VERSION, PLURAL, KIND = "metapolicy.dev", "v1alpha1", "metapolicies", "MetaPolicy"
NAMESPACE = "default"


@contextlib.contextmanager
def running(workers: int, keep_logs: bool = False) -> Iterator[Environment]:
    """Emulator + operator for the block. Logs are kept when asked, or when the block failed,
    so a misbehaving operator can be examined afterwards."""
    # SIGTERM unwinds like Ctrl-C, so a killed benchmark still stops the processes it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="metapolicy-bench-"))
    failed = True
    try:
        with environment(workdir, workers=workers) as env:
            yield env
        failed = False
    finally:
        if failed or keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def provenance(wall: float, load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    """Wall time, how loaded the (shared) machine was, and uncommitted code under test."""
    return {
        "wall_seconds": wall,
        "load_average": {"start": load_at_start, "end": os.getloadavg()},
        "source_changes": uncommitted_changes(),
    }


def provenance_note(p: Mapping[str, Any]) -> str:
    load = p["load_average"]
    note = (
        f"Wall time {p['wall_seconds']:.0f} s; load average (1 min) {load['start'][0]:.1f} at "
        f"start, {load['end'][0]:.1f} at the end, on {os.cpu_count()} cores (a load above that: "
        "processes waited for a core)."
    )
    if p["source_changes"]:
        changed = ", ".join(p["source_changes"])
        note += f" Uncommitted changes in the code under test: {changed}."
    return note


def node_spec(profile: NodeProfile, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A node entry for `e2e.nodes.Nodes.add` from a simulator profile (tiered, heterogeneous)."""
    return {
        "name": profile.name,
        "cpu": f"{profile.cpu:g}",
        "memory": f"{int(profile.memory_mib)}Mi",
        "latencyMs": profile.latency_ms,
        "labels": dict(labels or {}),
    }


def selector(scenario: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"matchLabels": {SCENARIO_LABEL: scenario, **(labels or {})}}


def apply_policy(kube: Kube, name: str, spec: Mapping[str, Any]) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": dict(spec),
    }
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)


def scrape(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def in_sync(metrics_text: str, name: str) -> bool:
    """The operator's own verdict from its last reconcile (gauge metapolicy_policy_in_sync)."""
    pattern = rf'^metapolicy_policy_in_sync\{{policy="{NAMESPACE}/{re.escape(name)}"\}} 1\.0$'
    return re.search(pattern, metrics_text, re.M) is not None


def live_nodes(kube: Kube) -> list[dict[str, Any]]:
    """Node objects as the API serves them (camelCase JSON, as kopf hands them over)."""
    response = kube.core.list_node(_preload_content=False)
    return json.loads(response.data)["items"]


def eligible(nodes: list[Mapping[str, Any]], node_selector: Mapping[str, Any]) -> list[str]:
    """The node names the operator must settle on, by its own rules (inventory.py)."""
    profiles, _, _ = eligible_profiles(nodes, node_selector)
    return [p.name for p in profiles]


def check_checkpoint(kube: Kube, name: str, status: Mapping, expected: list[str]) -> dict:
    """Read the active checkpoint back as the operator would, and rebuild the network from it.

    The pointer is compared with what `load_active` returns, because `load_active` silently
    falls back to an older version when the active one is corrupt: that must count as a fault.
    """
    store = ConfigMapStore(kube.core, NAMESPACE, name)
    out: dict[str, Any] = {"pointer": None, "loaded": None, "decodes": False, "builds": False}
    try:
        out["pointer"] = store.active()
        out["versions"] = store.versions()
        loaded = store.load_active()
    except CheckpointError as error:
        out["error"] = str(error)
        return out | {"valid": False}
    if loaded is None:
        return out | {"valid": False, "error": "no checkpoint stored"}
    version, checkpoint = loaded
    out |= {"loaded": version, "decodes": True}
    try:
        policy = policy_from_checkpoint(checkpoint)
        out["builds"] = sorted(policy.slot_names) == sorted(checkpoint.meta["node_names"])
    except CheckpointError as error:
        out["error"] = str(error)
    names = sorted(checkpoint.meta["node_names"])
    out["nodes_match"] = names == sorted(expected)
    out["status_version_match"] = status.get("activeVersion") == version == out["pointer"]
    out["valid"] = bool(
        out["decodes"] and out["builds"] and out["nodes_match"] and out["status_version_match"]
    )
    if not out["nodes_match"]:
        out["checkpoint_only"] = sorted(set(names) - set(expected))
        out["eligible_only"] = sorted(set(expected) - set(names))
    return out


def stats(values: list[float]) -> dict[str, float | int | None]:
    """n, p50, p95, p99, max (linear interpolation; with a handful of runs p95 ~ the max)."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {
        "n": len(values),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


#: Operator log lines of a healthy run (kopf's plain format has no level to filter on).
ROUTINE = re.compile(
    r"^(Handler|Activity|Daemon) '[^']+' succeeded\.$|^saved checkpoint version |^metrics on "
    r"|^Initial authentication |^Signal SIGTERM |^[^ ]+/[^ ]+: "
    r"(InitialTraining|Trained|NodeSetChanged|Promoted): "
)


def log_findings(text: str, limit: int = 20) -> dict[str, Any]:
    """Every operator log line that is not routine, counted and the first ones quoted: a
    reconcile error, a traceback, a rollback or a kopf warning is something to look at."""
    notable = [line for line in text.splitlines() if line.strip() and not ROUTINE.search(line)]
    return {
        "notable_lines": len(notable),
        "tracebacks": sum(1 for line in notable if line.startswith("Traceback")),
        "reconcile_failed": sum(1 for line in notable if "reconcile failed" in line),
        "first_notable": notable[:limit],
    }


def log_note(findings: Mapping[str, Any], quote: int = 8) -> str:
    """Markdown for the report: nothing if the operator log was routine, else the first lines."""
    if not findings["notable_lines"]:
        return "Operator log: routine lines only (no error, traceback, rollback or warning)."
    lines = "\n".join(findings["first_notable"][:quote])
    return (
        f"Operator log: {findings['notable_lines']} non-routine lines "
        f"({findings['tracebacks']} tracebacks, {findings['reconcile_failed']} failed reconciles)"
        f"; the first:\n\n```\n{lines}\n```"
    )
