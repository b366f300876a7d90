"""Adaptation latency: wall time of the whole pipeline a node join or leave triggers, split into
the stages `adapt()` reports (resize, distil, fine-tune, select, validate, ...) plus writing the
candidate checkpoint, with p50/p95 over repeats, for several cluster and network sizes.

    python -m benchmarks.latency --out benchmarks/results/latency
    python -m benchmarks.latency --quick --out /tmp/latency     # N 8 and 20, hidden 64, 5 repeats

Each repeat is a fresh base policy on N nodes followed by one resize, alternating +1 and -1
node so both directions count. The base policy is untrained: every stage runs a fixed number of
steps or episodes, so wall time hardly depends on how good the policy is. Settings are the
default `AdaptationSettings` (budget, strategy auto, validation episodes); only `max_nodes` is
raised to N + 1 so that N = 20 and 64 may grow. One torch thread, as in the operator's workers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace

import numpy as np
import torch

from benchmarks.common import machine_info, write_json
from metapolicy.adapt import AdaptationSettings, adapt
from metapolicy.checkpoint import policy_to_checkpoint
from metapolicy.cluster import make_cluster, resize_cluster
from metapolicy.policy import SlotPolicy, make_policy
from metapolicy.record import AdaptationRecord
from metapolicy.store import FilesystemStore

STAGE_ORDER = ("resize", "zero_shot_validate", "distill", "fine_tune", "select", "validate")
WRITE = "checkpoint_write"
TARGET_SECONDS = 10.0
SERVE_TARGET_SECONDS = 2.0
TARGET_CONFIG = ("node-set", 20, 64)


def warm_worker() -> None:
    """What the operator's worker initialiser does: one thread, dynamo imported up front, and
    a tiny adaptation so lazy imports are not charged to the first measured repeat."""
    import torch._dynamo

    torch.set_num_threads(1)
    nodes = make_cluster(3, seed=999)
    tiny = AdaptationSettings(budget_steps=1024, episodes=2)
    adapt(make_policy("node-set", nodes, 16), resize_cluster(nodes, 1, seed=999), tiny)


def write_checkpoint(candidate: SlotPolicy, record: AdaptationRecord) -> float:
    """Seconds to encode the candidate and store it as the active version, as `metapolicy
    adapt` does, in a fresh store (fsync included: that is part of the real cost)."""
    with tempfile.TemporaryDirectory(prefix="mp-latency-") as root:
        start = time.perf_counter()
        store = FilesystemStore(root)
        version = store.save(policy_to_checkpoint(candidate, record=record, parent=1))
        store.set_active(version)
        return time.perf_counter() - start


def run_one(arch: str, n: int, hidden: int, repeat: int, seed: int, budget: int) -> dict:
    """One base policy and one resize; +1 node on even repeats, -1 on odd ones."""
    delta = 1 if repeat % 2 == 0 else -1
    nodes = make_cluster(n, seed)
    backup = make_policy(arch, nodes, hidden, seed)
    defaults = AdaptationSettings()
    settings = replace(
        defaults, seed=seed, budget_steps=budget, max_nodes=max(defaults.max_nodes, n + 1)
    )
    served: list[float] = []  # when the zero-shot candidate could be served (serve first)
    start = time.perf_counter()
    result = adapt(
        backup,
        resize_cluster(nodes, delta, seed=seed + 101),
        settings,
        on_zero_shot=lambda _: served.append(time.perf_counter() - start),
    )
    write = write_checkpoint(result.candidate, result.record)
    zero_shot = {
        ("zero_shot_validate" if k == "validate" else k): v
        for k, v in result.zero_shot.record.timings.items()
    }
    return {
        "arch": arch,
        "nodes": n,
        "hidden": hidden,
        "repeat": repeat,
        "seed": seed,
        "delta": delta,
        "strategy": result.strategy,
        "outcome": result.outcome,
        "stages": zero_shot | dict(result.timings) | {WRITE: write},
        "serve": served[0],
        "total": time.perf_counter() - start,
    }


def stage_names(runs: list[dict]) -> list[str]:
    """Every stage seen, known ones first in pipeline order, then unknown ones as they came,
    with the checkpoint write last: new stages in `adapt()` show up without editing this file."""
    seen = list(dict.fromkeys(k for r in runs for k in r["stages"] if k != WRITE))
    known = [s for s in STAGE_ORDER if s in seen]
    return [*known, *(s for s in seen if s not in known), WRITE]


def summarise(runs: list[dict]) -> list[dict]:
    """p50/p95 per config, every row with the same stages in the same order. A stage missing
    from some repeats of a config (distillation runs only on growth) counts as 0 s there; one
    missing from all of them is None."""
    rows = []
    names = stage_names(runs)
    configs = dict.fromkeys((r["arch"], r["nodes"], r["hidden"]) for r in runs)
    for arch, n, hidden in configs:
        picked = [r for r in runs if (r["arch"], r["nodes"], r["hidden"]) == (arch, n, hidden)]
        stages = {
            name: percentiles([r["stages"].get(name, 0.0) for r in picked])
            if any(name in r["stages"] for r in picked)
            else None
            for name in names
        }
        rows.append(
            {
                "arch": arch,
                "nodes": n,
                "hidden": hidden,
                "repeats": len(picked),
                "strategies": sorted({r["strategy"] for r in picked}),
                "stages": stages,
                "serve": percentiles([r["serve"] for r in picked]),
                "total": percentiles([r["total"] for r in picked]),
            }
        )
    return rows


def percentiles(values: list[float]) -> dict:
    return {"p50": float(np.median(values)), "p95": float(np.percentile(values, 95))}


def table(rows: list[dict]) -> str:
    names = list(rows[0]["stages"])
    header = [f"{s} p50 / p95" for s in names] + ["serve p50 / p95", "total p50 / p95"]
    lines = [
        "| arch | N | hidden | " + " | ".join(header) + " |",
        "|---|---|---" + "|---" * len(header) + "|",
    ]
    for r in rows:
        cells = [cell(r["stages"][s]) for s in names] + [cell(r["serve"]), cell(r["total"])]
        lines.append(f"| {r['arch']} | {r['nodes']} | {r['hidden']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cell(p: dict | None) -> str:
    if p is None:
        return "–"
    return f"{seconds(p['p50'])} / {seconds(p['p95'])}"


def seconds(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s"


def target_line(rows: list[dict], default_budget: bool) -> str:
    goal = f"pipeline p95 ≤ {TARGET_SECONDS:.0f} s at N=20, hidden 64, default budget"
    row = next((r for r in rows if (r["arch"], r["nodes"], r["hidden"]) == TARGET_CONFIG), None)
    if row is None or not default_budget:
        return f"Target {goal}: not measured in this run."
    p95, serve = row["total"]["p95"], row["serve"]["p95"]
    verdict = "met" if p95 <= TARGET_SECONDS else "NOT met"
    served = "met" if serve <= SERVE_TARGET_SECONDS else "NOT met"
    return (
        f"Target {goal}: **{verdict}** (node-set p95 {p95:.1f} s over {row['repeats']} runs). "
        f"Serve first: the zero-shot candidate is ready to serve at p95 {serve:.2f} s "
        f"(target {SERVE_TARGET_SECONDS:.0f} s: **{served}**); the rest is the background "
        "fine-tune."
    )


def jobs(args: argparse.Namespace) -> list[tuple[str, int, int, int, int, int]]:
    configs = [("node-set", n, h) for n in args.nodes for h in args.hidden]
    configs += [("slot-mlp", n, 64) for n in args.slot_mlp_nodes]
    return [
        (arch, n, hidden, repeat, args.seed + repeat, args.budget)
        for arch, n, hidden in configs
        for repeat in range(args.repeats)
    ]


def run_all(todo: list[tuple], workers: int, done: Callable[[list[dict]], None]) -> list[dict]:
    """`done` sees the runs so far after each one: a long grid that gets interrupted still
    leaves its finished runs on disk."""
    runs: list[dict] = []
    if workers <= 1:
        warm_worker()
        results = (run_one(*job) for job in todo)
    else:
        spawn = multiprocessing.get_context("spawn")  # as the operator: no fork after torch
        pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=warm_worker)
        results = pool.map(run_one, *zip(*todo, strict=True))
    for run in results:
        print(
            f"{run['arch']} N={run['nodes']} hidden={run['hidden']} delta={run['delta']:+d} "
            f"seed={run['seed']}: {run['total']:.1f}s ({run['strategy']}, {run['outcome']})",
            flush=True,
        )
        runs.append(run)
        done(runs)
    if workers > 1:
        pool.shutdown()
    return runs


def markdown(args: argparse.Namespace, rows: list[dict], default_budget: bool) -> str:
    parallel = (
        f"{args.workers} runs in parallel, sharing the machine's cores"
        if args.workers > 1
        else "runs one after another in one process"
    )
    return "\n".join(
        [
            f"# Adaptation latency (budget {args.budget} steps, strategy auto, "
            f"{args.repeats} repeats per row)",
            "",
            f"p50 / p95 wall time per stage; {parallel}; one torch thread. Each repeat: untrained "
            "base policy (wall time hardly depends on skill), then +1 / -1 node alternately, "
            "default `AdaptationSettings` except maxNodes raised to N + 1. resize and "
            "zero_shot_validate are the serve-first stage; serve = from the start to the "
            "zero-shot candidate validated (what the operator then stores and serves); "
            "checkpoint_write = encode + `FilesystemStore.save` + `set_active` in a fresh store; "
            "total = the `adapt()` call (both stages) plus that write, end to end. Load "
            "average (1 min) at the start: "
            f"{args.load_at_start:.1f} on {multiprocessing.cpu_count()} cores.",
            "",
            table(rows),
            "",
            target_line(rows, default_budget),
            "",
        ]
    )


def main() -> None:
    default_budget = AdaptationSettings().budget_steps
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", nargs="+", type=int, default=[8, 20, 64])
    parser.add_argument("--hidden", nargs="+", type=int, default=[64, 256])
    parser.add_argument(
        "--slot-mlp-nodes", nargs="*", type=int, default=[8, 20, 64], help="slot-mlp, hidden 64"
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="repeat i uses seed + i")
    parser.add_argument(
        "--budget", type=int, default=default_budget, help="fine-tune steps; default: the default"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="N 8 and 20, hidden 64, 5 repeats")
    parser.add_argument("--out", default="benchmarks/results/latency")
    args = parser.parse_args()
    args.load_at_start = os.getloadavg()[0]
    if args.quick:
        args.nodes, args.hidden, args.slot_mlp_nodes, args.repeats = [8, 20], [64], [], 5
    torch.set_num_threads(1)
    todo = jobs(args)
    start = time.perf_counter()
    machine = machine_info()
    settings = asdict(AdaptationSettings(budget_steps=args.budget)) | {"max_nodes": "max(20, N+1)"}

    def save(runs: list[dict]) -> None:
        data = {
            "args": vars(args),
            "machine": machine,
            "settings": settings,
            "seeds": sorted({r["seed"] for r in runs}),
            "complete": len(runs) == len(todo),
            "seconds": time.perf_counter() - start,
            "rows": summarise(runs),
            "runs": runs,
        }
        write_json(f"{args.out}.json", data)

    rows = summarise(run_all(todo, args.workers, save))
    text = markdown(args, rows, args.budget == default_budget)
    with open(f"{args.out}.md", "w") as f:
        f.write(text)
    print(text)
    plot(rows, f"{args.out}.png")


def plot(rows: list[dict], path: str) -> None:
    """The PNG is a convenience: without matplotlib the JSON and table still get written."""
    try:
        from benchmarks.plots import latency_bars
    except ImportError:
        print("no PNG: matplotlib is missing (pip install -e '.[bench]')")
        return
    latency_bars(rows, path)


if __name__ == "__main__":
    main()
