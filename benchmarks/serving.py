"""Placement server: prioritize latency and throughput under a real HTTP load generator, and the
hot-swap gap (promotion to the first request the new version answers).

    python -m benchmarks.serving --out benchmarks/results/serving
    python -m benchmarks.serving --quick --out /tmp/serving   # 2 s runs, 8 promotions

What runs is what is deployed: the emulator (`e2e.embedded`) as a process holding 1000 nodes
and one running pod per node, and `metapolicy serve` as a process (1 or 2 workers on one port,
SO_REUSEPORT) that lists and watches it, on loopback. `wrk` (one thread, benchmarks/serving.lua)
posts one captured ExtenderArgs body: a full v1.Pod and the candidates' NodeNames, as
kube-scheduler sends with `nodeCacheCapable: true`. Each (architecture, candidate count) has
its own MetaPolicy (filesystem store) whose active version has a slot for every candidate,
1000 included (beyond the CRD's maxNodes of 256: this measures the cost per candidate); the
weights are untrained, which costs the same as trained ones. The latency budget is raised to
1 s so that every measured answer is the policy's (checked: `policy share`), not a fallback.

Runs per configuration: `sequential` (one connection: the latency of one request), `saturated`
(8 connections: the throughput), and at 100 candidates `paced` at about 200 requests/s, with one
connection (kube-scheduler's pattern: its scheduling cycle takes one pod at a time, so it waits
for each answer before the next call) and with 4 (bursts from several schedulers).

Hot swap: a ConfigMap-backed policy (the pointer watched) and a filesystem-backed one (ACTIVE
polled every 0.25 s); a new version is stored and verified, then the pointer is moved and
requests (a new connection each, so both workers are asked) run until the new version answers.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kubernetes
import numpy as np

from benchmarks.common import machine_info, write_json
from metapolicy.checkpoint import policy_to_checkpoint
from metapolicy.cluster import make_cluster
from metapolicy.policy import make_policy
from metapolicy.record import AdaptationRecord, Outcome
from metapolicy.store import Checkpoint, FilesystemStore
from metapolicy_operator.configmap_store import ConfigMapStore

ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "benchmarks" / "serving.lua"
ARCHITECTURES = ("node-set", "slot-mlp")
SIZES = (10, 100, 1000)
GROUP, VERSION, PLURAL = "metapolicy.dev", "v1alpha1", "metapolicies"
BUDGET_MS = 1000
TARGETS = {"p99_100_ms": 10.0, "p99_1000_ms": 50.0, "rate_100": 200.0, "swap_p95_s": 2.0}


def stored(policy) -> Checkpoint:
    """A version as the operator stores it: with the record of how it was made (the server
    refuses a version without one)."""
    record = AdaptationRecord(outcome=Outcome.PROMOTED, reason="benchmark", trigger="initial")
    return policy_to_checkpoint(policy, record=record)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"not within {timeout}s: {what}")


# ----- the cluster ------------------------------------------------------------------------------
def start_emulator(tmp: Path) -> tuple[subprocess.Popen, Path]:
    kubeconfig = tmp / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "e2e.embedded", "--port", "0", "--kubeconfig", str(kubeconfig),
         "--crd", str(ROOT / "crds/metapolicy.yaml")],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    line = process.stdout.readline()
    if not line.startswith("READY"):
        raise RuntimeError(f"emulator: {line}")
    return process, kubeconfig


def pod_body(name: str, labels: dict, cpu: str, node: str | None = None) -> dict:
    """A v1.Pod as the API server stores it and kube-scheduler sends it."""
    spec = {
        "containers": [{
            "name": "main", "image": "registry.example/app:1.0",
            "resources": {"requests": {"cpu": cpu, "memory": "512Mi"},
                          "limits": {"cpu": cpu, "memory": "512Mi"}},
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent",
        }],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
        "schedulerName": "metapolicy-scheduler", "priority": 0,
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                         "effect": "NoExecute", "tolerationSeconds": 300}],
    }  # fmt: skip
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web",
                    "uid": "rs-1",
                    "controller": True,
                }
            ],
        },
        "spec": spec,
        "status": {"phase": "Running" if node else "Pending", "qosClass": "Guaranteed"},
    }


def build_cluster(core, nodes, rng) -> None:
    for node in nodes:
        resources = {"cpu": str(node.cpu), "memory": f"{int(node.memory_mib)}Mi", "pods": "110"}
        core.create_node({
            "metadata": {"name": node.name,
                         "annotations": {"metapolicy.dev/latency-ms": str(node.latency_ms)}},
            "status": {"allocatable": resources, "capacity": resources,
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })  # fmt: skip
    for i, node in enumerate(nodes):
        cpu = f"{int(rng.uniform(0.1, 0.6) * node.cpu * 1000)}m"
        core.create_namespaced_pod(
            "default", pod_body(f"running-{i}", {"app": "x"}, cpu, node.name)
        )


def add_policy(custom, name: str, selector: dict, storage: dict) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MetaPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": selector}, "storage": storage},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)


# ----- the server -------------------------------------------------------------------------------
def start_server(kubeconfig: Path, workers: int, log: Path) -> tuple[subprocess.Popen, int, int]:
    port, metrics_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "metapolicy_operator.cli", "serve", "--kubeconfig", str(kubeconfig),
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
         "--workers", str(workers), "--budget-ms", str(BUDGET_MS)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    return process, port, metrics_port


def post(port: int, body: bytes) -> tuple[int, dict[str, str]]:
    """One prioritize call on a fresh connection: (status, headers)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST", "/scheduler/prioritize", body,
            {"Content-Type": "application/json", "Connection": "close"},
        )  # fmt: skip
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def answered_by_policy(port: int, body_file: Path) -> bool:
    return post(port, body_file.read_bytes())[1].get("X-Metapolicy-Outcome") == "policy"


def metric(port: int, name: str) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


POLICY_ANSWERS = 'metapolicy_serve_requests_total{outcome="policy",verb="prioritize"}'


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the workers)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        todo += [int(c) for c in children]
    return total / 1024


# ----- load -------------------------------------------------------------------------------------
def wrk(port: int, body_file: Path, seconds: float, connections: int, pause_ms: int = 0) -> dict:
    duration = f"{max(round(seconds), 1)}s"  # wrk takes whole seconds
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}", "--timeout", "5s", "-s", str(LUA),
         f"http://127.0.0.1:{port}/scheduler/prioritize"],
        capture_output=True, text=True, check=True,
        env=os.environ | {"BODY_FILE": str(body_file), "PAUSE_MS": str(pause_ms)},
    ).stdout  # fmt: skip
    result = json.loads(next(x for x in out.splitlines() if x.startswith("{")))
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def measure(port, metrics_port, body_file, label, seconds, connections, pause_ms=0) -> dict:
    before = metric(metrics_port, POLICY_ANSWERS)
    result = wrk(port, body_file, seconds, connections, pause_ms)
    policy = metric(metrics_port, POLICY_ANSWERS) - before
    return {
        "mode": label,
        "connections": connections,
        "pause_ms": pause_ms,
        "rate": result["rate"],
        "requests": result["requests"],
        "mean_ms": result["mean_us"] / 1000,
        "p50_ms": result["p50_us"] / 1000,
        "p90_ms": result["p90_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "max_ms": result["max_us"] / 1000,
        "errors": result["non_2xx"] + result["socket_errors"],
        # wrk counts requests it sent; a run's last few may be cut off: allow that slack
        "policy_share": min(policy / max(result["requests"], 1), 1.0),
    }


# ----- hot swap ---------------------------------------------------------------------------------
def swap_gaps(port, body, store, promote, count: int, seed: int, nodes) -> list[dict]:
    """`count` times: store a new version (as the operator does after an adaptation), then
    move the pointer and measure the seconds from the pointer write to the first answer by the
    new version, and to the first of 20 answers in a row by it (every worker switched)."""
    gaps = []
    for k in range(seed, seed + count):
        version = store.save(stored(make_policy("node-set", nodes, 64, seed=k)))
        start = promote(version)
        first = settled = None
        streak, failed = 0, 0
        deadline = start + 30
        while time.perf_counter() < deadline:
            status, headers = post(port, body)
            now = time.perf_counter()
            failed += status != 200
            new = headers.get("X-Metapolicy-Version") == str(version)
            if new and first is None:
                first = now - start
            streak = streak + 1 if new else 0
            if streak >= 20:
                settled = now - start
                break
        gaps.append({"version": version, "first_s": first, "all_s": settled, "failed": failed})
    return gaps


def promoter_configmap(core, store: ConfigMapStore):
    def promote(version: int) -> float:
        store.load(version)  # the operator verifies before it moves the pointer
        start = time.perf_counter()
        core.patch_namespaced_config_map(
            f"{store.prefix}-active", store.namespace, {"data": {"version": str(version)}}
        )
        return start

    return promote


def promoter_filesystem(store: FilesystemStore):
    def promote(version: int) -> float:
        start = time.perf_counter()
        store.set_active(version)  # verifies (a few ms), then renames the ACTIVE file
        return start

    return promote


def summarise_gaps(gaps: list[dict]) -> dict:
    first = np.array([g["first_s"] if g["first_s"] is not None else np.inf for g in gaps])
    settled = np.array([g["all_s"] if g["all_s"] is not None else np.inf for g in gaps])
    return {
        "promotions": len(gaps),
        "first_p50_s": float(np.percentile(first, 50)),
        "first_p95_s": float(np.percentile(first, 95)),
        "first_max_s": float(first.max()),
        "all_p95_s": float(np.percentile(settled, 95)),
        "failed_requests": int(sum(g["failed"] for g in gaps)),
    }


# ----- the run ----------------------------------------------------------------------------------
def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    emulator, kubeconfig = start_emulator(tmp)
    rng = np.random.default_rng(0)
    result: dict = {"rows": [], "swap": []}
    try:
        api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        nodes = make_cluster(max(SIZES), seed=0)
        started = time.perf_counter()
        build_cluster(core, nodes, rng)
        result["cluster_setup_s"] = time.perf_counter() - started
        stores = tmp / "stores"
        bodies = {}
        for arch in ARCHITECTURES:
            for n in SIZES:
                name = f"bench-{arch}-{n}"
                label = {"bench": f"{arch}-{n}"}
                add_policy(custom, name, label, {"backend": "filesystem", "path": str(stores)})
                store = FilesystemStore(stores / "default" / name)
                policy = make_policy(arch, nodes[:n], hidden=64, seed=0)
                store.set_active(store.save(stored(policy)))
                body = {
                    "Pod": pod_body("web-7d4b9c-x2k8p", label | {"app": "web"}, "500m"),
                    "Nodes": None,
                    "NodeNames": [node.name for node in nodes[:n]],
                }
                bodies[arch, n] = tmp / f"{arch}-{n}.json"
                bodies[arch, n].write_text(json.dumps(body))
        # Hot swap: one ConfigMap-backed policy (small enough for a ConfigMap).
        add_policy(custom, "swap", {"bench": "swap"}, {"backend": "configmap"})
        swap_store = ConfigMapStore(core, "default", "swap")
        swap_nodes = nodes[:10]
        swap_store.set_active(
            swap_store.save(stored(make_policy("node-set", swap_nodes, 64, seed=0)))
        )
        swap_body = json.dumps({
            "Pod": pod_body("swap-pod", {"bench": "swap"}, "500m"), "Nodes": None,
            "NodeNames": [node.name for node in swap_nodes],
        }).encode()  # fmt: skip
        fs_name = "bench-node-set-10"
        fs_store = FilesystemStore(stores / "default" / fs_name)
        fs_body = bodies["node-set", 10].read_bytes()

        for workers in args.workers:
            log = tmp / f"serve-{workers}.log"
            server, port, metrics_port = start_server(kubeconfig, workers, log)
            try:
                for (arch, n), body_file in bodies.items():  # every policy answers first
                    wait(
                        functools.partial(answered_by_policy, port, body_file),
                        180,
                        f"{arch} at {n} candidates served; log {log}",
                    )
                result.setdefault("rss_mib", {})[workers] = rss_mib(server.pid)
                for (arch, n), body_file in bodies.items():
                    runs = [("sequential", 1, 0), ("saturated", 8, 0)]
                    if n == 100:  # pauses for about `paced_rate` requests/s in all
                        probe = measure(port, metrics_port, body_file, "probe", 1, 1)
                        for connections in (1, 4):
                            period = 1000 * connections / args.paced_rate
                            pause = max(round(period - probe["mean_ms"]), 0)
                            runs.append(("paced", connections, pause))
                    for mode, connections, pause in runs:
                        row = measure(
                            port, metrics_port, body_file, mode, args.seconds, connections, pause
                        )
                        row |= {"arch": arch, "candidates": n, "workers": workers}
                        result["rows"].append(row)
                        print(json.dumps(row), flush=True)

                for backend, promote, body, store in (
                    ("configmap", promoter_configmap(core, swap_store), swap_body, swap_store),
                    ("filesystem", promoter_filesystem(fs_store), fs_body, fs_store),
                ):
                    gaps = swap_gaps(
                        port, body, store, promote, args.promotions, 1000 * workers, nodes[:10]
                    )
                    summary = summarise_gaps(gaps) | {"backend": backend, "workers": workers}
                    result["swap"].append(summary | {"gaps": gaps})
                    print(json.dumps(summary), flush=True)
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(60)
        api.close()
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def targets(result: dict) -> list[dict]:
    """Each target, per architecture and worker count: the measured value and whether met."""
    out = []
    rows = result["rows"]
    for row in rows:
        key = f"{row['arch']}, {row['workers']} worker(s)"
        if row["mode"] == "sequential" and row["candidates"] in (100, 1000):
            limit = TARGETS["p99_100_ms"] if row["candidates"] == 100 else TARGETS["p99_1000_ms"]
            out.append({
                "target": f"p99 <= {limit:g} ms at {row['candidates']} candidates", "where": key,
                "measured": f"{row['p99_ms']:.1f} ms", "met": row["p99_ms"] <= limit,
            })  # fmt: skip
        if row["candidates"] == 100 and row["mode"] == "sequential":
            # One connection at full speed is kube-scheduler's own pattern (one pod per
            # scheduling cycle, each answer awaited). The paced runs (about 200/s, the pause
            # rounded to 1 ms, so a little under) show the tail at that rate: in the table.
            met = row["rate"] >= TARGETS["rate_100"] and row["p99_ms"] < TARGETS["p99_100_ms"]
            out.append({
                "target": ">= 200 requests/s at 100 candidates with p99 < 10 ms",
                "where": f"{key}, {row['connections']} connection(s)",
                "measured": f"{row['rate']:.0f}/s, p99 {row['p99_ms']:.1f} ms", "met": met,
            })  # fmt: skip
    for swap in result["swap"]:
        out.append({
            "target": "hot-swap gap p95 <= 2 s",
            "where": f"{swap['backend']} store, {swap['workers']} worker(s)",
            "measured": f"{swap['first_p95_s']:.3f} s (every worker: {swap['all_p95_s']:.3f} s)",
            "met": swap["first_p95_s"] <= TARGETS["swap_p95_s"],
        })  # fmt: skip
    return out


def markdown(result: dict, args) -> str:
    lines = [
        "# Placement server: prioritize latency, throughput, hot swap",
        "",
        "`metapolicy serve` as a process against the emulator as a process (1000 nodes, one",
        "running pod each), on loopback; load from `wrk -t1` posting a captured ExtenderArgs",
        "(full v1.Pod, NodeNames). Untrained policies with a slot per candidate; budget raised",
        f"to {BUDGET_MS} ms so every answer is the policy's (`policy share`). 2 cores: wrk,",
        "the server and the emulator share them (the load average at the end says whether",
        f"other jobs did too). {args.seconds:g} s per run.",
        "",
        "| arch | candidates | workers | run | requests/s | p50 ms | p90 ms | p99 ms | max ms "
        "| errors | policy share |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        run_name = r["mode"]
        if r["mode"] == "paced":
            run_name += f" ({r['connections']} conn., {r['pause_ms']} ms pause)"
        if r["mode"] == "saturated":
            run_name += " (8 conn.)"
        lines.append(
            f"| {r['arch']} | {r['candidates']} | {r['workers']} | {run_name} | {r['rate']:,.0f} "
            f"| {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} "
            f"| {r['errors']} | {r['policy_share']:.3f} |"
        )
    lines += [
        "",
        "## Hot swap: pointer write to the first answer by the new version",
        "",
        "| store | workers | promotions | p50 s | p95 s | max s | p95 s, every worker "
        "| failed requests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result["swap"]:
        lines.append(
            f"| {s['backend']} | {s['workers']} | {s['promotions']} | {s['first_p50_s']:.3f} "
            f"| {s['first_p95_s']:.3f} | {s['first_max_s']:.3f} | {s['all_p95_s']:.3f} "
            f"| {s['failed_requests']} |"
        )
    lines += ["", "## Targets", "", "| target | where | measured | met |", "|---|---|---|---|"]
    for t in targets(result):
        lines.append(
            f"| {t['target']} | {t['where']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |"
        )
    rss = ", ".join(f"{w} worker(s): {m:.0f} MiB" for w, m in result.get("rss_mib", {}).items())
    load = result.get("load_average", {})
    if load:
        lines += [
            "",
            "Load average of the machine (1, 5, 15 min) before: "
            + ", ".join(f"{x:.1f}" for x in load["before"])
            + "; after: "
            + ", ".join(f"{x:.1f}" for x in load["after"])
            + " (2 cores: above 2, processes waited for a core).",
        ]
    lines += ["", f"Server memory (RSS, all processes, 6 policies loaded): {rss}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
    parser.add_argument("--promotions", type=int, default=40, help="hot swaps per store")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--paced-rate", type=float, default=210.0, help="requests/s aimed at")
    parser.add_argument("--quick", action="store_true", help="2 s runs, 8 promotions")
    parser.add_argument("--out", default="benchmarks/results/serving")
    args = parser.parse_args()
    if shutil.which("wrk") is None:  # like the alert tests without promtool: skipped, said so
        print("benchmarks.serving skipped: it needs wrk (apt-get install wrk)")
        return
    if args.quick:
        args.seconds, args.promotions = 2.0, 8
    start = time.perf_counter()
    load_before = os.getloadavg()
    result = run(args)
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["targets"] = targets(result)
    write_json(
        f"{args.out}.json",
        {"args": vars(args), "machine": machine_info(), "seconds": time.perf_counter() - start}
        | result,
    )
    text = markdown(result, args)
    Path(f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
