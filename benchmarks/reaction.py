"""Operator reaction time: from a Node write to the MetaPolicy serving the new node set.

`metapolicy run` and the KMock API server run as separate processes (the e2e harness). One
MetaPolicy selects N heterogeneous nodes (default 20; the simulator's tiers: cpu, memory and
the latency annotation), hidden 64, maxNodes N + 1, with the CRD's default adaptation budget
(50000 steps), freeze and strategy (auto), and a short settle window. Validation runs in full
but may not roll back (`minRetention` 0.5, `rollback.enabled: false`), so that every
adaptation serves. After the initial training is Ready, R single-node changes alternate a
delete and an add (N -> N-1 -> N ...). The operator serves first: the zero-shot candidate is
validated and made active, then fine-tuned in the background. For each change:

* serve = t1 - t0 - settleSeconds: t0 when the API write returned, t1 when the polled status
  shows the first history record for the new node set (the zero-shot one): the time to serve
  a changed node set from the end of the settle window;
* pipeline = that record's `adaptationTime` (resize + validation in the worker) and
  timeToServe (from the job's start to the version being active, store writes included);
* overhead = serve - pipeline: what the operator adds around the ML work (event delivery,
  reconcile reads, checkpoint transfer, store writes, status patches), plus the status poll
  interval (50 ms);
* fine-tuned = when the record of the fine-tuned candidate arrives - t0 - settleSeconds, and
  its `adaptationTime` (both stages);
* detect = first `phase: Adapting` seen - t0 - settleSeconds (part of the overhead);
* peak RSS of the operator and of a worker process over the whole run (from /proc).

The initial training budget is demo-sized on purpose: reaction measures the adaptation path,
not the quality of the policy. Targets (issue 12): serve p95 <= 2 s at N = 20 and <= 5 s at
N = 1000; the operator's overhead <= 2 s at p95.

    python -m benchmarks.reaction [--quick] [--nodes 1000]   # results/reaction-n1000.{json,md}
"""

from __future__ import annotations

import argparse
import os
import time
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
    node_spec,
    provenance,
    provenance_note,
    running,
    scrape,
    selector,
    stats,
)
from benchmarks.probes import ProcSampler
from e2e.cluster import Environment
from e2e.nodes import Nodes
from e2e.wait import E2EFailure, poll
from metapolicy.cluster import sample_nodes
from metapolicy_operator.planning import node_set_hash

SCENARIO = "bench-reaction"
POLICY = "bench-reaction"
PREFIX = "rx"
STATUS_POLL = 0.05
SERVE_TARGETS = {20: 2.0, 1000: 5.0}  # p95 seconds from the end of the settle window


def policy_spec(args: argparse.Namespace) -> dict[str, Any]:
    """CRD defaults everywhere except the training budget, the settle window and validation,
    which runs in full (its time is part of the pipeline) but may not roll back: a rollback
    leaves the old node set serving, and there would be no reaction to time. (With the
    default budget, the masked-mode check once rejected a one-node removal on all three
    attempts, with identical candidates each time.)"""
    return {
        "nodeSelector": selector(SCENARIO),
        "maxNodes": args.nodes + 1,
        "hiddenSize": args.hidden,
        "training": {"budgetSteps": args.train_steps, "seed": args.seed},
        "adaptation": {"settleSeconds": args.settle},
        "validation": {"minRetention": args.min_retention, "rollback": {"enabled": False}},
    }


def wait_quiet(env: Environment, expected: list[str], timeout: float) -> dict[str, Any]:
    """Ready, in sync by the operator's own gauge, and the eligible count reported: the
    operator has re-read the node set after its last adaptation, so the next change is news."""

    def quiet() -> dict[str, Any] | None:
        status = env.kube.policy_status(POLICY)
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        if conditions.get("Degraded", {}).get("reason") == "AdaptationFailing":
            raise E2EFailure(f"{POLICY} gave up on its node set: {status.get('message')}")
        ok = (
            status.get("phase") == "Ready"
            and sorted(status.get("nodes") or []) == sorted(expected)
            and status.get("eligibleNodes") == len(expected)
            and in_sync(scrape(env.operator.metrics_url), POLICY)
        )
        return status if ok else None

    what = f"{POLICY} to be Ready and in sync on {len(expected)} nodes"
    return poll(
        quiet, timeout, what, interval=0.2, describe=lambda: str(env.kube.policy_status(POLICY))
    )


def change(nodes: Nodes, current: list[str], index: int, rng, seed: int) -> tuple[str, str]:
    """One node change: even runs delete a random node, odd runs add a fresh one."""
    if index % 2 == 0:
        name = str(rng.choice(sorted(current)))
        nodes.delete(name, wait=False)
        return "delete", name
    start = 1 + max(int(n.rsplit("-", 1)[1]) for n in current)
    profile = sample_nodes(1, seed, start=start, prefix=PREFIX)[0]
    nodes.add(node_spec(profile))
    return "add", profile.name


def measure_one(env: Environment, nodes: Nodes, current: list[str], index: int, rng, args):
    """One change, timed from the write's return to the new record in status."""
    before = len(env.kube.policy_status(POLICY).get("history") or [])
    kind, name = change(nodes, current, index, rng, args.seed)
    t0 = time.monotonic()
    expected = sorted(set(current) - {name}) if kind == "delete" else sorted([*current, name])
    target = node_set_hash(expected)
    seen: dict[str, float] = {}

    def records(final: bool) -> dict[str, Any] | None:
        status = env.kube.policy_status(POLICY)
        if status.get("phase") == "Adapting" and "adapting" not in seen:
            seen["adapting"] = time.monotonic()
        for record in (status.get("history") or [])[before:]:
            if record.get("nodeSetHash") == target and (
                not final or record.get("trigger") != "zero-shot"
            ):
                return record
        return None

    what = f"a record for the node set after {kind} {name}"
    record = poll(lambda: records(False), args.timeout, what, interval=STATUS_POLL)
    t1 = time.monotonic()
    what = f"the fine-tuned record after {kind} {name}"
    final = poll(lambda: records(True), args.timeout, what, interval=STATUS_POLL)
    t2 = time.monotonic()
    status = env.kube.policy_status(POLICY)
    reaction = t1 - t0
    pipeline = float(record.get("adaptationTime", float("nan")))
    adapting = seen.get("adapting")
    return expected, {
        "run": index + 1,
        "change": kind,
        "node": name,
        "nodes_after": len(expected),
        "strategy": record.get("strategy"),
        "trigger": record.get("trigger"),
        "outcome": record.get("outcome"),
        "validation_passed": not record.get("reason", "").startswith("validation failed"),
        "reason": record.get("reason"),
        "retention": record.get("performanceRetention"),
        "final_outcome": final.get("outcome"),
        "final_retention": final.get("performanceRetention"),
        "phase": status.get("phase"),
        "status_nodes_match": sorted(status.get("nodes") or []) == expected,
        "reaction_s": reaction,
        "reaction_minus_settle_s": reaction - args.settle,
        "pipeline_s": pipeline,
        "record_time_to_serve_s": record.get("timeToServe"),
        "overhead_s": reaction - args.settle - pipeline,
        "fine_tuned_s": t2 - t0 - args.settle,
        "fine_tune_pipeline_s": final.get("adaptationTime"),
        "detect_s": None if adapting is None else adapting - t0 - args.settle,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    with running(args.workers, args.keep_logs) as env:
        sampler = ProcSampler({"operator": env.operator.process.pid, "emulator": env.emulator.pid})
        sampler.start()
        nodes = Nodes(env.kube, SCENARIO)
        for profile in sample_nodes(args.nodes, args.seed, prefix=PREFIX):
            nodes.add(node_spec(profile))
        started = time.monotonic()
        apply_policy(env.kube, POLICY, policy_spec(args))
        current = sorted(eligible(live_nodes(env.kube), selector(SCENARIO)))
        status = wait_quiet(env, current, args.timeout)
        train = status["history"][-1]
        ready = time.monotonic() - started
        print(f"initial training on {len(current)} nodes: Ready after {ready:.1f}s", flush=True)
        runs = []
        for index in range(args.repeats):
            current, row = measure_one(env, nodes, current, index, rng, args)
            runs.append(row)
            print(
                f"  run {row['run']}: {row['change']} {row['node']} -> {row['outcome']}, "
                f"served {row['reaction_minus_settle_s']:.2f}s after the settle window "
                f"(pipeline {row['pipeline_s']:.2f}s, overhead {row['overhead_s']:.2f}s), "
                f"fine-tuned {row['fine_tuned_s']:.1f}s ({row['final_outcome']})",
                flush=True,
            )
            status = wait_quiet(env, current, args.timeout)
        checkpoint = check_checkpoint(env.kube, POLICY, status, current)
        findings = log_findings(env.operator.log_tail(10_000_000))
        sampler.halt.set()
        sampler.sample()
        exit_code = env.operator.stop()
    memory = sampler.report()
    return {
        "runs": runs,
        "memory": {k: v for k, v in memory.items() if k != "processes"},
        "initial_training": {k: train.get(k) for k in ("adaptationTime", "candidateScore")},
        "final_checkpoint": checkpoint,
        "operator_log": findings,
        "operator_exit_code": exit_code,
    }


def summarise(runs: list[dict], nodes: int) -> dict[str, Any]:
    keys = (
        "reaction_s", "reaction_minus_settle_s", "pipeline_s", "record_time_to_serve_s",
        "overhead_s", "fine_tuned_s", "fine_tune_pipeline_s", "detect_s",
    )  # fmt: skip
    summary = {k: stats([r[k] for r in runs if r.get(k) is not None]) for k in keys}
    serve_p95 = summary["reaction_minus_settle_s"]["p95"]
    limit = SERVE_TARGETS.get(nodes)
    summary["targets"] = {
        "serve_limit_s": limit,
        "serve_p95_met": None if limit is None else serve_p95 <= limit,
        "overhead_p95_le_2s": summary["overhead_s"]["p95"] <= 2.0,
        "all_served": all(r["outcome"] == "promoted" for r in runs),
    }
    return summary


def table(runs: list[dict], summary: dict, args: argparse.Namespace) -> str:
    def f(x) -> str:
        return "-" if x is None else f"{x:.2f}"

    lines = [
        "| run | change | nodes | strategy | zero-shot | served s | pipeline s | overhead s "
        "| fine-tuned s | fine-tune |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['run']} | {r['change']} {r['node']} | {r['nodes_after']} | {r['strategy']} "
            f"| {r['outcome']}{'' if r['validation_passed'] else ' (failed, no rollback)'} "
            f"| {f(r['reaction_minus_settle_s'])} | {f(r['pipeline_s'])} | {f(r['overhead_s'])} "
            f"| {f(r.get('fine_tuned_s'))} | {r.get('final_outcome', '-')} |"
        )
    lines += ["", "| measure | p50 s | p95 s | max s |", "|---|---|---|---|"]
    names = {
        "reaction_minus_settle_s": "served = first record − t0 − settle: time to serve",
        "pipeline_s": "zero-shot pipeline (record adaptationTime: resize + validation)",
        "record_time_to_serve_s": "record timeToServe (job start to active, writes included)",
        "overhead_s": "overhead = served − pipeline",
        "detect_s": "detect = first Adapting − t0 − settle",
        "fine_tuned_s": "fine-tuned record − t0 − settle",
        "fine_tune_pipeline_s": "fine-tuned record adaptationTime (both stages)",
    }
    for key, name in names.items():
        s = summary[key]
        lines.append(f"| {name} | {f(s['p50'])} | {f(s['p95'])} | {f(s['max'])} |")
    t = summary["targets"]

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else ("**met**" if ok else "**not met**")

    served = summary["reaction_minus_settle_s"]["p95"]
    limit = "no target at this N" if t["serve_limit_s"] is None else f"≤ {t['serve_limit_s']:g} s"
    lines += [
        "",
        "| target | value | verdict |",
        "|---|---|---|",
        f"| time to serve p95 {limit} (N={args.nodes}) | {f(served)} s "
        f"| {verdict(t['serve_p95_met'])} |",
        f"| operator overhead ≤ 2 s at p95 | {f(summary['overhead_s']['p95'])} s "
        f"| {verdict(t['overhead_p95_le_2s'])} |",
    ]
    memory = summary.get("memory")
    if memory:
        lines += [
            "",
            f"Peak RSS: operator {memory['operator_peak_rss_mib']:.0f} MiB, one worker "
            f"{memory['worker_peak_rss_mib']:.0f} MiB (sampled every 0.2 s; VmHWM "
            f"{memory['operator_vmhwm_mib']:.0f} / {memory['worker_vmhwm_mib']:.0f} MiB).",
        ]
    return "\n".join(lines)


def markdown(data: dict[str, Any]) -> str:
    """The report from the JSON alone, so that it can be rebuilt without a rerun."""
    args = argparse.Namespace(**data["args"])
    header = (
        f"# Operator reaction time (N={args.nodes}, hidden {args.hidden}, default adaptation "
        f"budget and strategy, settleSeconds {args.settle})\n\n"
        f"`metapolicy run` (--workers {args.workers}) against the embedded KMock API server, "
        f"as processes. {args.repeats} single-node changes after an initial training of "
        f"{args.train_steps} steps (demo-sized: this measures the adaptation path, not policy "
        f"quality), minRetention {args.min_retention}, validation without rollback (it still "
        "runs, and its time counts) so that every change is served. Status polled every "
        f"{STATUS_POLL * 1000:.0f} ms. {provenance_note(data)}\n\n"
    )
    body = table(data["runs"], data["summary"], args)
    return f"{header}{body}\n\n{log_note(data['operator_log'])}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 changes, smaller initial train")
    parser.add_argument("--repeats", type=int, help="node changes (default 8, --quick 4)")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--train-steps", type=int, help="initial training (100000, --quick 20000)")
    parser.add_argument("--settle", type=int, default=2, help="spec.adaptation.settleSeconds")
    parser.add_argument("--min-retention", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=1, help="operator --workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound of every wait (s)")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--out", help="default benchmarks/results/reaction-n{nodes}")
    args = parser.parse_args()
    args.repeats = args.repeats or (4 if args.quick else 8)
    args.train_steps = args.train_steps or (20_000 if args.quick else 100_000)
    args.out = args.out or f"benchmarks/results/reaction-n{args.nodes}"
    started, load = time.monotonic(), os.getloadavg()
    result = run(args)
    data = {"args": vars(args), "machine": machine_info()}
    data |= provenance(time.monotonic() - started, load)
    summary = summarise(result["runs"], args.nodes) | {"memory": result["memory"]}
    data |= {"policy_spec": policy_spec(args), "summary": summary}
    write_json(f"{args.out}.json", data | result)
    text = markdown(data | result)
    Path(f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
