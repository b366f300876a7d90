"""Event storm: hundreds of Node changes in seconds, and what the operator does with them.

`metapolicy run` (--workers 2, the CLI default) and the KMock API server run as separate
processes (the e2e harness). Three MetaPolicies select disjoint node groups by label
(`bench.metapolicy.dev/group` = a, b, c), 8 heterogeneous nodes each to start. Disjoint on
purpose: the final eligible set of each policy is then determined by one writer thread, and
the operator still has to sort every Node event into the right policy (it nudges all of them
on every change). Budgets are tiny (training 2048, adaptation 512 steps, hidden 16) and
validation may not roll back (`validation.rollback.enabled: false`, it still runs): this
measures the operator, not learning.

When all three are Ready and in sync, a storm fires 500 Node changes within 10 s from three
threads (one per group, so the changes to a node stay ordered): joins, leaves (deletes,
preferring nodes already tainted for removal), cluster-autoscaler and Karpenter removal taints,
cordons and uncordons, Ready flaps. `--quick` runs one storm; the default runs three in a row,
each once the previous one has converged. A model of the node state keeps every group at 3-16
nodes with at least 2 eligible, so a valid adaptation (1..maxNodes=20) is always possible at
the end.

Measured: the changes actually made and the storm's duration; during the storm and until the
operator has converged, /metrics every 100 ms (from a forked process, so that the writer
threads' GIL cannot pose as operator latency) and the CPU seconds and RSS of the operator and
its worker processes from /proc; the adaptations each policy started (new status.history
records); the time from the last write until every policy is Ready with status.nodes equal to
the eligible set computed from the live Nodes by the operator's own rules
(`inventory.eligible_profiles`); and the active checkpoint, read back through the
ConfigMap store and rebuilt into a network, whose node names must equal that set.

Targets: at most one adaptation per policy per settle window (the rule: the records started
after the storm began may number at most ceil((storm duration + settle) / settle)); a
consistent final state; no /metrics request slower than 1 s.

    python -m benchmarks.storm [--quick] --out benchmarks/results/storm
"""

from __future__ import annotations

import argparse
import math
import os
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, write_json
from benchmarks.embedded import (
    apply_policy,
    check_checkpoint,
    eligible,
    in_sync,
    live_nodes,
    log_findings,
    log_note,
    provenance,
    provenance_note,
    running,
    scrape,
    selector,
    stats,
)
from benchmarks.probes import ProcSampler, Scraper
from benchmarks.storm_plan import GROUP_LABEL, KINDS, Group, NodeState, plan
from e2e.cluster import Environment, Kube
from e2e.nodes import Nodes
from e2e.wait import E2EFailure, poll

SCENARIO = "bench-storm"
GROUPS = ("a", "b", "c")
SLOW_SCRAPE = 0.5  # seconds: /metrics requests at least this slow are listed with their time


def policy_name(group: str) -> str:
    return f"storm-{group}"


def group_selector(group: str) -> dict[str, Any]:
    return selector(SCENARIO, {GROUP_LABEL: group})


def policy_spec(group: str, settle: int) -> dict[str, Any]:
    return {
        "nodeSelector": group_selector(group),
        "hiddenSize": 16,
        "training": {"budgetSteps": 2048},
        "adaptation": {"budgetSteps": 512, "settleSeconds": settle},
        # Validation runs and is recorded, but cannot roll back: with a 512-step budget the
        # outcome is a coin flip (a fully replaced node set once scored retention 0.47 on all
        # three attempts), and a rollback leaves the policy on its old node set by design.
        "validation": {"episodes": 4, "minRetention": 0.5, "rollback": {"enabled": False}},
        "workload": {"episodeTasks": 32},
    }


# ----- firing it ------------------------------------------------------------------------------


def apply(nodes: Nodes, change: tuple[str, str, Any]) -> None:
    kind, name, arg = change
    if kind == "join":
        nodes.add(arg)
    elif kind == "leave":
        nodes.delete(name, wait=False)
    elif kind == "taint":
        nodes.taint(name, arg)
    elif kind == "cordon":
        nodes.cordon(name, unschedulable=arg)
    else:
        nodes.set_ready(name, arg)


def fire(kubeconfig: Path, changes: list, start: float, duration: float, out: list) -> None:
    """One writer: its own API client, each change at its slot in [start, start + duration].
    Sleeping paces the storm (the point is the rate), it waits for no condition."""
    kube = Kube(kubeconfig, real=False)
    nodes = Nodes(kube, SCENARIO)
    step = duration / max(1, len(changes))
    try:
        for i, change in enumerate(changes):
            delay = start + i * step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            began = time.monotonic()
            error = None
            try:
                apply(nodes, change)
            except Exception as exc:  # a refused write is a result to report, not a crash
                error = f"{type(exc).__name__}: {exc}"[:300]
            out.append(
                {
                    "kind": change[0],
                    "node": change[1],
                    "start": began,
                    "end": time.monotonic(),
                    "error": error,
                }
            )
    finally:
        kube.close()


# ----- convergence and consistency ------------------------------------------------------------


def consistency(env: Environment) -> dict[str, dict[str, Any]]:
    """Per policy: Ready, status.nodes and eligibleNodes equal to the eligible set by the
    operator's rules on the live Nodes, and the operator's own in-sync gauge at 1."""
    nodes = live_nodes(env.kube)
    try:
        text = scrape(env.operator.metrics_url)
    except OSError:  # counted by the scraper; here it only means "not known to be in sync"
        text = ""
    out = {}
    for group in GROUPS:
        name = policy_name(group)
        status = env.kube.policy_status(name)
        want = eligible(nodes, group_selector(group))
        have = sorted(status.get("nodes") or [])
        checks = {
            "phase_ready": status.get("phase") == "Ready",
            "nodes_equal_eligible": have == want,
            "eligible_count_reported": status.get("eligibleNodes") == len(want),
            "in_sync_gauge": in_sync(text, name),
        }
        out[name] = checks | {
            "ok": all(checks.values()),
            "eligible": want,
            "phase": status.get("phase"),
            "message": status.get("message"),
            "status_only": sorted(set(have) - set(want)),
            "eligible_only": sorted(set(want) - set(have)),
            "history_length": len(status.get("history") or []),
        }
    return out


def wait_consistent(env: Environment, timeout: float) -> tuple[bool, dict]:
    last: dict[str, Any] = {}

    def done() -> bool:
        last.clear()
        last.update(consistency(env))
        return all(p["ok"] for p in last.values())

    try:
        poll(done, timeout, "every policy to be consistent", interval=0.25)
        return True, last
    except E2EFailure:
        return False, last


def watch_quiet(env: Environment, seconds: float) -> dict[str, Any]:
    """After convergence, watch for `seconds`: no new record, still consistent (a late
    adaptation to a stale set would show up here)."""
    before = {name: p["history_length"] for name, p in consistency(env).items()}
    deadline = time.monotonic() + seconds
    problems: list[str] = []
    while time.monotonic() < deadline and not problems:
        for name, p in consistency(env).items():
            if p["history_length"] != before[name]:
                problems.append(f"{name}: a new history record after convergence")
            if not p["ok"]:
                problems.append(f"{name}: inconsistent after convergence ({p['message']})")
        time.sleep(0.25)  # an observation period: the condition is that nothing happens
    return {"seconds": seconds, "stable": not problems, "problems": problems}


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def adaptations(
    records: list[dict], storm_wall: datetime, duration: float, settle: float, changed: bool
):
    """New records of one policy, and the settle-window rule applied to them. `changed`: the
    final eligible set differs from the one before the storm, so the debounce should turn the
    whole storm (never quiet for a settle window) into exactly one adaptation, else none."""
    windows = math.ceil((duration + settle) / settle)
    rows = []
    for r in records:
        started = parse_time(r.get("startedAt"))
        rows.append(
            {
                "trigger": r.get("trigger"),
                "strategy": r.get("strategy"),
                "outcome": r.get("outcome"),
                "old_nodes": r.get("oldNodes"),
                "new_nodes": r.get("newNodes"),
                "adaptation_time_s": r.get("adaptationTime"),
                "started_after_storm_start_s": (
                    None if started is None else (started - storm_wall).total_seconds()
                ),
            }
        )
    trains = sum(1 for r in rows if r["trigger"] == "initial")
    return {
        "count": len(rows),
        "trains": trains,
        "allowed": windows,
        "at_most_one_per_window": len(rows) <= windows,
        "debounce_expects": int(changed),
        "as_debounce_expects": len(rows) == int(changed),
        "records": rows,
    }


# ----- the run --------------------------------------------------------------------------------


def setup(env: Environment, args: argparse.Namespace, milestones: list) -> dict[str, Group]:
    groups = {}
    for offset, name in enumerate(GROUPS):
        groups[name] = group = Group(name, args.seed * 10 + offset)
        nodes = Nodes(env.kube, SCENARIO)
        for _ in range(args.initial_nodes):
            spec = group.profile()
            nodes.add(spec)
            group.nodes[spec["name"]] = NodeState()
    for name in GROUPS:
        apply_policy(env.kube, policy_name(name), policy_spec(name, args.settle))
    milestones.append(("policies applied", time.monotonic()))
    ok, state = wait_consistent(env, args.timeout)
    if not ok:
        raise E2EFailure(f"the policies did not become Ready before the storm: {state}")
    milestones.append(("policies ready", time.monotonic()))
    return groups


def storm(env: Environment, groups: dict[str, Group], args, rng, sampler, milestones, label: str):
    """One storm, then the wait for convergence and a quiet period; what happened, per policy."""
    per_group = [
        args.changes // len(GROUPS) + (i < args.changes % len(GROUPS)) for i in range(len(GROUPS))
    ]
    plans = {g: plan(groups[g], n, rng) for g, n in zip(GROUPS, per_group, strict=True)}
    initial = consistency(env)
    before = {p: c["history_length"] for p, c in initial.items()}
    events_before = node_events(env.operator.metrics_url)
    wall, start = datetime.now(UTC), time.monotonic() + 0.2
    milestones.append((f"{label} start", start))
    sampler.mark("storm_start")
    results: dict[str, list] = {g: [] for g in GROUPS}
    threads = [
        threading.Thread(
            target=fire,
            args=(env.kube.kubeconfig, plans[g], start, args.duration, results[g]),
            name=f"storm-{g}",
        )
        for g in GROUPS
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writes = sorted((w for g in GROUPS for w in results[g]), key=lambda w: w["start"])
    last = max(w["end"] for w in writes)
    milestones.append((f"{label} last write", last))
    converged, final = wait_consistent(env, args.timeout)
    converged_at = time.monotonic()
    milestones.append((f"{label} converged" if converged else f"{label} gave up", converged_at))
    sampler.mark("converged")
    events = node_events(env.operator.metrics_url) - events_before
    quiet = watch_quiet(env, args.settle + 3)
    duration = last - start
    starts = [w["start"] for w in writes]
    counts = {k: sum(1 for w in writes if w["kind"] == k and not w["error"]) for k in KINDS}
    records = {}
    for group in GROUPS:
        name = policy_name(group)
        history = env.kube.policy_status(name).get("history") or []
        changed = final[name]["eligible"] != initial[name]["eligible"]
        records[name] = adaptations(history[before[name] :], wall, duration, args.settle, changed)
    return {
        "requested": args.changes,
        "done": sum(1 for w in writes if not w["error"]),
        "errors": [w for w in writes if w["error"]][:20],
        "error_count": sum(1 for w in writes if w["error"]),
        "by_kind": counts,
        "node_events_seen_by_operator": events,
        "duration_s": duration,
        "rate_per_s": len(writes) / duration if duration > 0 else None,
        "max_gap_s": float(np.max(np.diff(starts))) if len(starts) > 1 else None,
        "write_latency_s": stats([w["end"] - w["start"] for w in writes]),
        "converged": converged,
        "convergence_s": converged_at - last if converged else None,
        "final": final,
        "quiet_after": quiet,
        "adaptations": records,
        "cpu_s": sampler.window("storm_start", "converged"),
        "window": (start, converged_at),
    }


def node_events(url: str) -> float:
    """Node watch events the operator has counted (metapolicy_node_events_total, all types)."""
    try:
        text = scrape(url)
    except OSError:
        return float("nan")
    pattern = r"^metapolicy_node_events_total\{[^}]*\} (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def metrics_stats(samples: list, windows: list[tuple], milestones: list) -> dict:
    """Latency of the scrapes inside the storm windows (the target), of all scrapes, and
    every slow one with the milestone it followed (where in the run it happened)."""
    inside = [s for s in samples if any(a <= s[0] <= b for a, b in windows)]
    t0 = milestones[0][1]

    def after(t: float) -> str:
        return [label for label, at in milestones if at <= t][-1] if t >= t0 else "start"

    slow = [
        {"at_s": t - t0, "latency_s": latency, "ok": ok, "after": after(t)}
        for t, latency, ok in samples
        if latency >= SLOW_SCRAPE or not ok
    ]
    return stats([s[1] for s in inside]) | {
        "errors": sum(1 for s in inside if not s[2]),
        "over_1s": sum(1 for s in inside if s[1] > 1.0),
        "whole_run": stats([s[1] for s in samples])
        | {
            "errors": sum(1 for s in samples if not s[2]),
            "over_1s": sum(s[1] > 1 for s in samples),
        },
        "slow": slow,
        "milestones_s": {label: at - t0 for label, at in milestones},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    with running(args.workers, args.keep_logs) as env:
        milestones = [("operator started", time.monotonic())]
        scraper = Scraper(env.operator.metrics_url)  # forked before any thread is started
        sampler = ProcSampler({"operator": env.operator.process.pid, "emulator": env.emulator.pid})
        sampler.start()
        try:
            groups = setup(env, args, milestones)
            storms = []
            for index in range(args.storms):
                label = f"storm {index + 1}"
                result = storm(env, groups, args, rng, sampler, milestones, label)
                storms.append(result)
                print(
                    f"{label}: {result['done']} changes in {result['duration_s']:.1f}s, "
                    f"converged {result['converged']} after {result['convergence_s']}s",
                    flush=True,
                )
            checkpoints = {}
            for group in GROUPS:
                name = policy_name(group)
                final = storms[-1]["final"][name]
                status = env.kube.policy_status(name)
                checkpoints[name] = check_checkpoint(env.kube, name, status, final["eligible"])
        finally:
            samples = scraper.finish()
            sampler.halt.set()
            sampler.join(timeout=5)
        findings = log_findings(env.operator.log_tail(10_000_000))
        exit_code = env.operator.stop()
    return {
        "storms": storms,
        "metrics_latency": metrics_stats(samples, [s.pop("window") for s in storms], milestones),
        "resources": sampler.report(),
        "checkpoints": checkpoints,
        "operator_log": findings,
        "operator_exit_code": exit_code,
    }


# ----- report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def table(result: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "| storm | changes done / planned | errors | duration s | changes/s | max gap s "
        "| join / leave / taint / cordon / ready | converged after s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(result["storms"], 1):
        kinds = " / ".join(str(s["by_kind"][k]) for k in KINDS)
        conv = f"{s['convergence_s']:.1f}" if s["converged"] else "**not converged**"
        lines.append(
            f"| {i} | {s['done']} / {s['requested']} | {s['error_count']} | "
            f"{s['duration_s']:.1f} | {s['rate_per_s']:.0f} | {s['max_gap_s']:.2f} | {kinds} "
            f"| {conv} |"
        )
    lines += [
        "",
        "| storm | policy | eligible at end | adaptations (trains) | allowed | debounce expects "
        "| records (strategy, outcome, nodes, start after storm start ±1 s) | consistent |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(result["storms"], 1):
        for name, a in s["adaptations"].items():
            final = s["final"][name]
            detail = "; ".join(
                f"{r['strategy']} {r['outcome']} {r['old_nodes']}→{r['new_nodes']} "
                f"@{r['started_after_storm_start_s']:.0f}s"
                for r in a["records"]
            )
            bad = [
                k
                for k in (
                    "phase_ready",
                    "nodes_equal_eligible",
                    "eligible_count_reported",
                    "in_sync_gauge",
                )
                if not final[k]
            ]
            state = "yes" if final["ok"] else f"**no** ({', '.join(bad)})"
            lines.append(
                f"| {i} | {name} | {len(final['eligible'])} | {a['count']} ({a['trains']}) "
                f"| {a['allowed']} | {a['debounce_expects']} | {detail or '-'} | {state} |"
            )
    lines += ["", "| policy | active checkpoint | valid | detail |", "|---|---|---|---|"]
    for name, c in result["checkpoints"].items():
        detail = ", ".join(
            f"{k}={c.get(k)}" for k in ("decodes", "builds", "nodes_match", "status_version_match")
        )
        lines.append(f"| {name} | v{c.get('pointer')} | {c['valid']} | {detail} |")
    r, m = result["resources"], result["metrics_latency"]
    lines += [
        "",
        "| storm | CPU s, storm start → converged: operator | its workers | API server |",
        "|---|---|---|---|",
    ]
    for i, s in enumerate(result["storms"], 1):
        cpu = s["cpu_s"]
        lines.append(
            f"| {i} | {cpu.get('operator', 0):.1f} | {cpu.get('worker', 0):.1f} "
            f"| {cpu.get('emulator', 0):.1f} |"
        )
    lines += [
        "",
        "| peak RSS MiB, whole run | operator (VmHWM) | one worker | all workers together |",
        "|---|---|---|---|",
        f"| sampled every 0.2 s | {r['operator_peak_rss_mib']:.0f} ({r['operator_vmhwm_mib']:.0f}) "
        f"| {r['worker_peak_rss_mib']:.0f} | {r['workers_total_peak_rss_mib']:.0f} |",
        "",
        f"| /metrics every {args.scrape_interval * 1000:.0f} ms | scrapes | errors | p50 ms "
        "| p99 ms | max ms | > 1 s |",
        "|---|---|---|---|---|---|---|",
        scrape_row("storms + convergence (target)", m),
        scrape_row("whole run (startup, training too)", m["whole_run"]),
    ]
    if m["slow"]:
        lines += [
            "",
            f"Scrapes slower than {SLOW_SCRAPE:g} s (or failed), by time since start:",
            "",
        ]
        lines += [
            f"- +{s['at_s']:.1f} s, {s['latency_s']:.2f} s{'' if s['ok'] else ' (failed)'}, "
            f"after '{s['after']}'"
            for s in m["slow"]
        ]
    t = targets(result)
    lines += [
        "",
        "| target | verdict |",
        "|---|---|",
        f"| at most one adaptation per policy per settle window | {verdict(t['adaptations'])} |",
        f"| final state consistent (status, gauge, checkpoint) | {verdict(t['consistent'])} |",
        f"| no /metrics request slower than 1 s | {verdict(t['metrics'])} |",
    ]
    return "\n".join(lines)


def scrape_row(what: str, m: dict[str, Any]) -> str:
    return (
        f"| {what} | {m['n']} | {m['errors']} | {m['p50'] * 1000:.0f} | {m['p99'] * 1000:.0f} "
        f"| {m['max'] * 1000:.0f} | {m['over_1s']} |"
    )


def targets(result: dict[str, Any]) -> dict[str, bool]:
    storms = result["storms"]
    return {
        "adaptations": all(
            a["at_most_one_per_window"] for s in storms for a in s["adaptations"].values()
        ),
        "consistent": all(s["converged"] and s["quiet_after"]["stable"] for s in storms)
        and all(c["valid"] for c in result["checkpoints"].values()),
        "metrics": result["metrics_latency"]["over_1s"] == 0
        and result["metrics_latency"]["errors"] == 0,
    }


def markdown(data: dict[str, Any]) -> str:
    """The report from the JSON alone, so that it can be rebuilt without a rerun."""
    args = argparse.Namespace(**data["args"])
    header = (
        f"# Event storm ({args.storms} × {args.changes} Node changes in {args.duration:g} s, "
        f"3 policies, settleSeconds {args.settle})\n\n"
        f"`metapolicy run` (--workers {args.workers}) against the embedded KMock API server, as "
        "processes. Three MetaPolicies on disjoint node groups, "
        f"{args.initial_nodes} nodes each to start; tiny budgets (training 2048, adaptation "
        "512 steps, hidden 16) and validation without rollback: this measures the operator, "
        "not learning. Settle-window rule: "
        "the records a policy started after a storm began may number at most "
        "ceil((storm duration + settle) / settle). Converged: seconds from the last change "
        "until every policy is consistent: Ready, "
        "status.nodes = the eligible set by the operator's rules on the live Nodes, in-sync "
        "gauge 1; the final state must also stay so for settle + 3 s, and the active checkpoint "
        "must decode with those node names. /metrics is scraped from a forked process. "
        f"{provenance_note(data)}\n\n"
    )
    return f"{header}{table(data, args)}\n\n{log_note(data['operator_log'])}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one storm instead of three")
    parser.add_argument("--storms", type=int, help="storms in a row (default 3, --quick 1)")
    parser.add_argument("--changes", type=int, default=500, help="node changes per storm")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per storm")
    parser.add_argument("--initial-nodes", type=int, default=8, help="per policy")
    parser.add_argument("--settle", type=int, default=3, help="spec.adaptation.settleSeconds")
    parser.add_argument("--workers", type=int, default=2, help="operator --workers")
    parser.add_argument("--scrape-interval", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="bound of every wait (s)")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/storm")
    args = parser.parse_args()
    args.storms = args.storms or (1 if args.quick else 3)
    started, load = time.monotonic(), os.getloadavg()
    result = run(args)
    data = {"args": vars(args), "machine": machine_info()}
    data |= provenance(time.monotonic() - started, load)
    data |= {"policy_spec": policy_spec("a", args.settle), "targets": targets(result)} | result
    write_json(f"{args.out}.json", data)
    text = markdown(data)
    Path(f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
