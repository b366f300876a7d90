"""Cost against cluster size: what training, serving a changed node set, fine-tuning, storing and
deciding cost at N = 20, 100, 1000 and 5000 nodes, now that a node-set policy trains and
validates on sub-clusters (32 nodes per episode, `metapolicy.subclusters`).

    python -m benchmarks.scale --out benchmarks/results/full/scale       # N 20, 100, 1000, 5000
    python -m benchmarks.scale --quick                                   # N 20 and 1000
    python -m benchmarks.scale --serve-only --repeats 10 --out benchmarks/results/full/scale-serve
    python -m benchmarks.scale --report-only --out benchmarks/results/full/scale  # redraw

Per N, in a fresh process of its own (one torch thread, as the operator's workers), so its
peak RSS is that size's alone:

* initial training with the default budget (node-set, 300k steps, imitation warm start when
  the myopic start scores below S 0.9 on the selection episodes): training time to S >= 1.0 on
  the selection episodes (imitation + PPO, without the time spent scoring the weights) and to
  the end, and S on the validation episodes;
* time to serve a changed node set: the zero-shot stage (resize + validation) plus writing the
  candidate as the active version of a filesystem store and encoding it as a ConfigMap body,
  alternately +1 and -1 node, p50 / p95, cold (nothing replayed) and warm (the backup's side
  of the validation replayed, as in an operator worker from the second adaptation on); the
  operator adds its own share, see reaction.py. `--serve-only` measures just this (and the
  bytes and decisions) on untrained policies: it costs the same whatever the policy learned;
* fine-tune time: the second stage of one +1 adaptation with the default budget (50k steps);
* checkpoint bytes: safetensors, manifest, and the ConfigMap as sent (base64, the 1 MiB cap);
* retention for the changes in `--deltas` (N = 1000 by default): the full pipeline with default
  settings, then S(serving policy, new) / S(backup, old) on `--episodes` validation episodes;
* decision p50 / p99 at 100 and 1000 candidates on the biggest policy: the observation of one
  pod and `preferences()` (the placement server's policy call), batch 1;
* peak RSS of the process (ru_maxrss);
* devices (`--devices`, default: the CPU, and cuda when torch sees a GPU): initial training and
  one fine-tune of `--device-steps` steps each at the biggest N on every device, side by side
  in one run (the simulator stays on the CPU; the policy, PPO and distillation move).
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine_info, write_json
from metapolicy import features
from metapolicy.adapt import AdaptationSettings, adapt, judge, train_candidate, zero_shot
from metapolicy.checkpoint import policy_to_checkpoint
from metapolicy.cluster import make_cluster, resize_cluster
from metapolicy.compact import snap
from metapolicy.evaluation import episode_returns, evaluation_seeds, reference
from metapolicy.policy import make_policy
from metapolicy.replays import REPLAYS
from metapolicy.selection import selection_seeds
from metapolicy.store import FilesystemStore, encode_checkpoint
from metapolicy.subclusters import DEFAULT_SIZE, sampled
from metapolicy.training import TrainingSettings, train_initial
from metapolicy_operator.configmap_store import MAX_BYTES, ConfigMapStore

TARGETS = {"serve_p95_s": {20: 2.0, 1000: 5.0}, "train_ratio": 2.0, "retention": 0.97}


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, float)
    return {"p50": float(np.median(a)), "p95": float(np.percentile(a, 95)), "n": len(values)}


def adaptation(args: argparse.Namespace, max_nodes: int) -> AdaptationSettings:
    settings = AdaptationSettings(max_nodes=max_nodes, seed=args.seed)
    return settings if args.budget is None else replace(settings, budget_steps=args.budget)


def training(n: int, nodes, args) -> tuple[Any, dict]:
    settings = TrainingSettings(
        max_nodes=n, seed=args.seed, episodes=args.episodes, steps=args.train_steps
    )
    start = time.perf_counter()
    result = train_initial(nodes, settings)
    wall = time.perf_counter() - start
    view = sampled(nodes, DEFAULT_SIZE)
    ref = reference(view, settings.workload, selection_seeds(settings.select_episodes))
    curve = [
        (steps, result.warm_start_seconds + seconds, ref.score(np.array([ret])))
        for steps, seconds, ret in result.curve
    ]
    to_one = next((sec for _, sec, score in curve if score >= 1.0), None)
    return result.policy, {
        "score": result.score,
        "best_heuristic": result.best_heuristic,
        "teacher": result.teacher,
        "seconds": result.seconds,
        "warm_start_seconds": result.warm_start_seconds,
        "wall_seconds": wall,
        "seconds_to_s1": to_one,
        "curve": curve,
    }


def write_seconds(candidate, record) -> float:
    with tempfile.TemporaryDirectory(prefix="mp-scale-") as root:
        start = time.perf_counter()
        store = FilesystemStore(root)
        checkpoint = policy_to_checkpoint(candidate, record=record)
        store.set_active(store.save(checkpoint))
        ConfigMapStore(None, "default", "scale")._version_body(checkpoint, 2)
        return time.perf_counter() - start


def time_to_serve(n: int, policy, args) -> dict:
    """Each change twice: cold (nothing replayed: the first adaptation in a fresh process) and
    warm (the backup's side of the validation replayed, as from the second adaptation on in an
    operator worker, `metapolicy.replays`)."""
    settings = adaptation(args, n + 1)
    runs = []
    for repeat in range(args.repeats):
        delta = 1 if repeat % 2 == 0 else -1
        changed = resize_cluster(policy.nodes, delta, seed=args.seed + 31 * repeat)
        REPLAYS.clear()
        for mode in ("cold", "warm"):
            start = time.perf_counter()
            stage = zero_shot(policy, changed, settings)
            write = write_seconds(stage.candidate, stage.record)
            runs.append(
                {
                    "mode": mode,
                    "delta": delta,
                    "outcome": str(stage.record.outcome),
                    "strategy": stage.record.strategy,
                    "resize": stage.record.timings["resize"],
                    "validate": stage.record.timings["validate"],
                    "write": write,
                    "total": time.perf_counter() - start,
                }
            )
    keys = ("resize", "validate", "write", "total")
    return {
        "runs": runs,
        **{
            mode: {k: pct([r[k] for r in runs if r["mode"] == mode]) for k in keys}
            for mode in ("cold", "warm")
        },
    }


def fine_tune(n: int, policy, args) -> dict:
    settings = adaptation(args, n + 1)
    first = zero_shot(policy, resize_cluster(policy.nodes, 1, seed=args.seed + 7), settings)
    start = time.perf_counter()
    trained = train_candidate(policy, first.record, first.candidate.nodes, settings)
    train = time.perf_counter() - start
    final = judge(policy, first, trained, settings)
    return {
        "train_seconds": train,
        "judge_seconds": time.perf_counter() - start - train,
        "timings": trained.timings,
        "outcome": str(final.record.outcome),
    }


def checkpoint_bytes(policy) -> dict:
    checkpoint = policy_to_checkpoint(policy)
    weights, manifest = encode_checkpoint(checkpoint, 1)
    body = ConfigMapStore(None, "default", "scale")._version_body(checkpoint, 1)
    sent = sum(len(v) for v in body["binaryData"].values()) + len(body["data"]["manifest.json"])
    return {
        "weights": len(weights),
        "weights_gzip": len(gzip.compress(weights, mtime=0)),
        "manifest": len(json.dumps(manifest)),
        "configmap": sent,
        "configmap_limit": MAX_BYTES,
        "configmap_keys": sorted(body["binaryData"]),
    }


def retention(n: int, policy, args) -> list[dict]:
    seeds = evaluation_seeds(args.episodes)
    workload = AdaptationSettings().workload
    old = sampled(policy.nodes, DEFAULT_SIZE)
    backup_s = reference(old, workload, seeds).score(
        episode_returns(policy.agent(), old, workload, seeds)
    )
    out = []
    for delta in args.deltas:
        settings = adaptation(args, n + max(delta, 0))
        start = time.perf_counter()
        result = adapt(policy, resize_cluster(policy.nodes, delta, seed=args.seed + 101), settings)
        seconds = time.perf_counter() - start
        serving = result.serving or policy
        new = sampled(result.candidate.nodes, DEFAULT_SIZE)
        score = reference(new, workload, seeds).score(
            episode_returns(serving.agent(), new, workload, seeds)
        )
        out.append(
            {
                "delta": delta,
                "strategy": result.zero_shot.record.strategy,
                "zero_shot_outcome": str(result.zero_shot.record.outcome),
                "outcome": str(result.outcome),
                "zero_shot_retention_16": result.zero_shot.record.performance_retention,
                "final_retention_16": result.performance_retention,
                "backup_s": backup_s,
                "serving_s": score,
                "retention": score / backup_s,
                "seconds": seconds,
                "timings": dict(result.record.timings),
            }
        )
    return out


def decisions(policy, candidates: int, repeats: int, seed: int) -> dict:
    """One pod, `candidates` of the policy's nodes offered, half of them partly loaded."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(policy.size, min(candidates, policy.size), replace=False)
    nodes = [policy.nodes[i] for i in pick]
    names = [n.name for n in nodes]
    cpu = np.array([n.cpu for n in nodes])
    memory = np.array([n.memory_mib for n in nodes])
    pods = 4
    state = features.ClusterState(
        cpu=cpu,
        memory=memory,
        latency=np.array([n.latency_ms for n in nodes]),
        available=np.ones(len(nodes), bool),
        requested_cpu=(cpu * rng.uniform(0, 0.8, len(nodes)))[None],
        requested_memory=(memory * rng.uniform(0, 0.8, len(nodes)))[None],
        has_room=np.ones((1, len(nodes)), bool),
        pod_node=np.repeat(np.arange(len(nodes)), pods),
        pod_cpu=np.full(len(nodes) * pods, 0.5),
        pod_start=rng.uniform(0, 3600, len(nodes) * pods),
        pod_qos=rng.integers(0, 3, len(nodes) * pods),
    )
    pending = features.PendingPods(
        cpu=np.array([1.0]),
        memory=np.array([2048.0]),
        attributes=features.PodAttributes().vector()[None],
        now=np.array([3600.0]),
        recent_arrivals=np.sort(rng.uniform(3000, 3600, features.PRESSURE_WINDOW))[None],
    )
    timings = {"observe_and_score": [], "score": []}
    for i in range(repeats + 20):
        start = time.perf_counter()
        obs = features.observe(state, pending)
        middle = time.perf_counter()
        policy.preferences(obs, names)
        end = time.perf_counter()
        if i >= 20:  # warm-up
            timings["observe_and_score"].append(end - start)
            timings["score"].append(end - middle)
    return {
        "candidates": len(nodes),
        "policy_slots": policy.size,
        **{
            k: {"p50_ms": 1e3 * float(np.median(v)), "p99_ms": 1e3 * float(np.percentile(v, 99))}
            for k, v in timings.items()
        },
    }


def warm_up() -> None:
    """What the operator's worker initialiser does, plus one tiny adaptation: lazy imports and
    first-call costs are not charged to the first measured change."""
    import torch._dynamo  # noqa: F401

    nodes = make_cluster(3, seed=999)
    tiny = AdaptationSettings(budget_steps=1024, episodes=2)
    adapt(make_policy("node-set", nodes, 16), resize_cluster(nodes, 1, seed=999), tiny)
    REPLAYS.clear()


def device_costs(n: int, device: str, args: argparse.Namespace) -> dict:
    """Initial training and one +1 fine-tune of `args.device_steps` steps each, with the policy
    on `device` (`spec.training.device`): the same work on every device, for the side-by-side
    table."""
    torch.set_num_threads(1)
    warm_up()
    nodes = make_cluster(n, seed=args.seed)
    steps = args.device_steps
    start = time.perf_counter()
    result = train_initial(
        nodes, TrainingSettings(max_nodes=n, seed=args.seed, steps=steps, device=device)
    )
    train = time.perf_counter() - start
    settings = replace(adaptation(args, n + 1), budget_steps=steps, device=device)
    first = zero_shot(result.policy, resize_cluster(nodes, 1, seed=args.seed + 7), settings)
    start = time.perf_counter()
    train_candidate(result.policy, first.record, first.candidate.nodes, settings)
    return {
        "nodes": n,
        "device": device,
        "steps": steps,
        "training_seconds": train,
        "fine_tune_seconds": time.perf_counter() - start,
        "score": result.score,
    }


def default_devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def run_size(n: int, args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    warm_up()
    nodes = make_cluster(n, seed=args.seed)
    started = time.perf_counter()
    serve_only = getattr(args, "serve_only", False)
    if serve_only:  # an untrained policy: serving costs the same whatever it learned
        out: dict[str, Any] = {"nodes": n}
        policy = snap(make_policy("node-set", nodes, seed=args.seed))
    else:
        policy, train = training(n, nodes, args)
        out = {"nodes": n, "training": train}
        print(f"N={n}: trained S={train['score']:.3f} in {train['seconds']:.0f}s", flush=True)
    out["checkpoint"] = checkpoint_bytes(policy)
    out["serve"] = time_to_serve(n, policy, args)
    serve = out["serve"]
    cold, warm = serve["cold"]["total"]["p95"], serve["warm"]["total"]["p95"]
    print(f"N={n}: time to serve p95 {cold:.2f}s cold, {warm:.2f}s warm", flush=True)
    if not serve_only:
        out["fine_tune"] = fine_tune(n, policy, args)
    if n in args.retention_nodes and not serve_only:
        out["retention"] = retention(n, policy, args)
        print(f"N={n}: retention {[round(r['retention'], 3) for r in out['retention']]}")
    if n == max(args.nodes):
        out["decisions"] = [decisions(policy, c, args.decisions, args.seed) for c in (100, 1000)]
    out["seconds"] = time.perf_counter() - started
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# ----- report ------------------------------------------------------------------------------------
def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**not met**")


def targets(sizes: list[dict]) -> list[tuple[str, str, bool | None]]:
    by_n = {s["nodes"]: s for s in sizes}
    rows = []
    for n, limit in TARGETS["serve_p95_s"].items():
        for mode in ("cold", "warm"):
            p95 = by_n[n]["serve"][mode]["total"]["p95"] if n in by_n else None
            value = "not measured" if p95 is None else f"{p95:.2f} s"
            what = f"time to serve p95 <= {limit:g} s at N = {n} ({mode})"
            rows.append((what, value, None if p95 is None else p95 <= limit))
    if all("training" in by_n.get(n, {}) for n in (20, 1000)):
        a, b = by_n[20]["training"], by_n[1000]["training"]
        for key, what in (("seconds_to_s1", "to S >= 1.0"), ("seconds", "to the end")):
            if a[key] and b[key]:
                ratio = b[key] / a[key]
                value = f"{b[key]:.0f} s vs {a[key]:.0f} s ({ratio:.2f}x)"
                what = f"initial training {what} at N = 1000 within 2x of N = 20"
                rows.append((what, value, ratio <= TARGETS["train_ratio"]))
    for s in sizes:
        for r in s.get("retention", []):
            rows.append(
                (f"retention at N = {s['nodes']}, delta {r['delta']:+d} >= 0.97",
                 f"{r['retention']:.3f}", r["retention"] >= TARGETS["retention"])
            )  # fmt: skip
    return rows


def markdown(data: dict) -> str:
    sizes = data["sizes"]
    lines = [
        f"# Cost against cluster size (node-set, hidden 64, sub-clusters of {DEFAULT_SIZE})",
        "",
        f"One process per N, one torch thread; {data['note']}",
        "",
        "| N | S final | to S >= 1.0 | training | imitation | serve cold p50 / p95 "
        "| serve warm p50 / p95 | fine-tune | checkpoint raw / ConfigMap | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sizes:
        t, c = s["training"], s["checkpoint"]
        cold, warm = s["serve"]["cold"]["total"], s["serve"]["warm"]["total"]
        to_one = "never" if t["seconds_to_s1"] is None else f"{t['seconds_to_s1']:.0f} s"
        lines.append(
            f"| {s['nodes']} | {t['score']:.3f} | {to_one} | {t['seconds']:.0f} s "
            f"| {t['teacher'] or '-'} ({t['warm_start_seconds']:.0f} s) "
            f"| {cold['p50']:.2f} / {cold['p95']:.2f} s | {warm['p50']:.2f} / {warm['p95']:.2f} s "
            f"| {s['fine_tune']['train_seconds']:.1f} s "
            f"| {c['weights'] / 1024:.0f} / {c['configmap'] / 1024:.0f} KiB "
            f"| {s['peak_rss_mib']:.0f} MiB |"
        )
    for s in sizes:
        if s.get("retention"):
            lines += [
                "",
                f"Retention at N = {s['nodes']} ({data['args']['episodes']} validation episodes; "
                "zero-shot and final as the pipeline's own 16-episode validation saw them):",
                "",
                "| delta | strategy | zero-shot | outcome | retention (16) | retention | took |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in s["retention"]:
                lines.append(
                    f"| {r['delta']:+d} | {r['strategy']} | {r['zero_shot_outcome']} "
                    f"{r['zero_shot_retention_16']:.3f} | {r['outcome']} "
                    f"| {r['final_retention_16']:.3f} | {r['retention']:.3f} "
                    f"| {r['seconds']:.0f} s |"
                )
        if s.get("decisions"):
            lines += [
                "",
                f"Decision, one pod, batch 1, policy of {s['nodes']} slots (p50 / p99):",
                "",
                "| candidates | observation + preferences() | preferences() |",
                "|---|---|---|",
            ]
            for d in s["decisions"]:
                a, b = d["observe_and_score"], d["score"]
                lines.append(
                    f"| {d['candidates']} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} ms "
                    f"| {b['p50_ms']:.2f} / {b['p99_ms']:.2f} ms |"
                )
    lines += device_table(data.get("devices") or [])
    lines += ["", "| target | value | verdict |", "|---|---|---|"]
    lines += [f"| {what} | {value} | {verdict(ok)} |" for what, value, ok in targets(sizes)]
    return "\n".join(lines) + "\n"


def device_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        f"Devices, the same work on each (N = {rows[0]['nodes']}, {rows[0]['steps']:,} steps of "
        "initial training and of one fine-tune; one CPU thread):",
        "",
        "| device | initial training | fine-tune | S |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['training_seconds']:.1f} s | {r['fine_tune_seconds']:.1f} s "
            f"| {r['score']:.3f} |"
        )
    if len(rows) == 1:
        lines += ["", "No GPU here: run the same command where torch sees one for its column."]
    return lines


def serve_markdown(data: dict) -> str:
    lines = [
        "# Time to serve a changed node set, by N (node-set, hidden 64, untrained policies)",
        "",
        "The zero-shot stage (resize + validation: 16 paired episodes of the candidate, the "
        "backup, the backup in masked mode and every heuristic) plus writing the version; one "
        "process per N after a warm-up adaptation, "
        f"{data['args']['repeats']} changes (+1 / -1 node alternately), each cold then warm. "
        + data["note"],
        "",
        "| N | cold p50 / p95 | warm p50 / p95 | validate cold / warm p50 | resize p95 "
        "| write p95 | ConfigMap | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in data["sizes"]:
        cold, warm = s["serve"]["cold"], s["serve"]["warm"]
        lines.append(
            f"| {s['nodes']} | {cold['total']['p50']:.2f} / {cold['total']['p95']:.2f} s "
            f"| {warm['total']['p50']:.2f} / {warm['total']['p95']:.2f} s "
            f"| {cold['validate']['p50']:.2f} / {warm['validate']['p50']:.2f} s "
            f"| {cold['resize']['p95'] * 1e3:.0f} ms | {cold['write']['p95'] * 1e3:.0f} ms "
            f"| {s['checkpoint']['configmap'] / 1024:.0f} KiB | {s['peak_rss_mib']:.0f} MiB |"
        )
    lines += ["", "| target | value | verdict |", "|---|---|---|"]
    rows = [r for r in targets(data["sizes"]) if r[0].startswith("time to serve")]
    lines += [f"| {what} | {value} | {verdict(ok)} |" for what, value, ok in rows]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no PNG: matplotlib is missing (pip install -e '.[bench]')")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for s in data["sizes"]:
        curve = np.array(s["training"]["curve"])
        left.plot(curve[:, 1], curve[:, 2], marker=".", label=f"N = {s['nodes']}")
    left.axhline(1.0, color="grey", lw=0.8, ls="--")
    left.set(xlabel="training seconds (imitation + PPO)", ylabel="S (selection episodes)",
             title="initial training")  # fmt: skip
    left.legend()
    names = [str(s["nodes"]) for s in data["sizes"]]
    x = np.arange(len(names))
    for offset, mode in ((-0.2, "cold"), (0.2, "warm")):
        bottom = np.zeros(len(names))
        for key in ("resize", "validate", "write"):
            values = np.array([s["serve"][mode][key]["p50"] for s in data["sizes"]])
            right.bar(x + offset, values, 0.38, bottom=bottom, label=f"{key} ({mode})")
            bottom += values
    right.set_xticks(x, names)
    right.set(xlabel="N", ylabel="seconds (p50)", title="time to serve a changed node set")
    right.legend(fontsize=7, ncol=2, loc="lower center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", nargs="+", type=int, default=[20, 100, 1000, 5000])
    parser.add_argument("--retention-nodes", nargs="*", type=int, default=[1000])
    parser.add_argument("--deltas", nargs="+", type=int, default=[10, -10, 100])
    parser.add_argument("--repeats", type=int, default=8, help="time-to-serve changes per N")
    parser.add_argument("--episodes", type=int, default=64, help="validation episodes for S")
    parser.add_argument("--decisions", type=int, default=500)
    parser.add_argument("--train-steps", type=int, help="default: the default budget")
    parser.add_argument("--budget", type=int, help="fine-tune steps; default: the default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--devices", nargs="*", help="default: cpu, and cuda when torch sees a GPU; none: skip"
    )
    parser.add_argument("--device-steps", type=int, default=50_000, help="per device and stage")
    parser.add_argument("--quick", action="store_true", help="N 20 and 1000, 4 changes")
    parser.add_argument(
        "--serve-only",
        action="store_true",
        help="only time to serve, checkpoint bytes and decisions, on untrained policies",
    )
    parser.add_argument("--out", default="benchmarks/results/scale")
    parser.add_argument(
        "--report-only", action="store_true", help="redraw the Markdown and PNG from --out.json"
    )
    args = parser.parse_args()
    if args.report_only:
        data = json.loads(Path(f"{args.out}.json").read_text())
        report(data, args.out, data["args"].get("serve_only", False))
        return
    if args.quick:
        args.nodes, args.repeats, args.decisions = [20, 1000], 4, 300
    started, load = time.monotonic(), os.getloadavg()
    machine = machine_info() | {"torch_threads": 1}
    sizes: list[dict] = []
    spawn = multiprocessing.get_context("spawn")
    for n in args.nodes:
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:  # a fresh process per N
            sizes.append(pool.submit(run_size, n, args).result())
        end_load = os.getloadavg()
        data = {
            "args": vars(args),
            "machine": machine,
            "load_average": {"start": load, "end": end_load},
            "wall_seconds": time.monotonic() - started,
            "note": (
                f"load average (1 min) {load[0]:.1f} at the start, {end_load[0]:.1f} at the end "
                f"on {os.cpu_count()} cores (above that, processes waited for a core). "
                + (
                    "GPU: " + torch.cuda.get_device_name(0)
                    if torch.cuda.is_available()
                    else "No GPU here: every figure is the CPU's."
                )
            ),
            "sizes": sizes,
        }
        write_json(f"{args.out}.json", data)
    devices = default_devices() if args.devices is None else args.devices
    if devices and not args.serve_only:
        for device in devices:
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                row = pool.submit(device_costs, max(args.nodes), device, args).result()
            data.setdefault("devices", []).append(row)
            print(f"{device}: training {row['training_seconds']:.1f}s", flush=True)
        write_json(f"{args.out}.json", data)
    report(data, args.out, args.serve_only)


def report(data: dict, out: str, serve_only: bool) -> None:
    text = serve_markdown(data) if serve_only else markdown(data)
    Path(f"{out}.md").write_text(text)
    print(text)
    if not serve_only:
        plot(data, f"{out}.png")


if __name__ == "__main__":
    main()
