"""Decision cost: one placement decision at batch 1 and throughput at batch 1024, for both
architectures and several cluster sizes; memory of the loaded policy; eager vs TorchScript vs
int8 dynamic quantisation vs torch.compile (inductor), and the score the quantised policy costs.

    python -m benchmarks.decision --out benchmarks/results/decision
    python -m benchmarks.decision --quick --out /tmp/decision   # N 8 and 20, fewer repeats

torch.compile needs a C++ compiler for inductor on CPU; if compiling fails, the row records why
instead of a time. Each compiled variant starts from a reset dynamo cache so that one shape's
guards never push another past the recompile limit (which would silently fall back to eager).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmarks.common import machine_info, write_json
from metapolicy.cluster import make_cluster
from metapolicy.evaluation import episode_returns, evaluation_seeds, reference
from metapolicy.policy import make_policy
from metapolicy.ppo import PPOSettings, train
from metapolicy.sim import PlacementSim


def timed(fn, repeats: int) -> np.ndarray:
    for _ in range(min(50, repeats)):  # warm-up
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out


def variants(policy, batch):
    """A decision's logits (`action_logits`: no value head, which only training reads) on
    fixed tensors: eager, TorchScript (traced), int8 dynamic."""
    quantised = torch.ao.quantization.quantize_dynamic(policy, {torch.nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        traced = torch.jit.trace_module(policy, {"action_logits": batch}, check_trace=False)
    return {
        "eager": policy.action_logits,
        "torchscript": traced.action_logits,
        "int8": quantised.action_logits,
    }


def compiled(policy, batch, mode: str):
    """-> (compiled forward, seconds the first call took). The first call is where inductor
    compiles, so it is timed apart from the steady state."""
    torch._dynamo.reset()
    fn = torch.compile(
        policy.action_logits, mode=None if mode == "default" else mode, dynamic=False
    )
    start = time.perf_counter()
    with torch.inference_mode():
        fn(*batch)
    return fn, time.perf_counter() - start


def why(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"


def parameter_bytes(policy) -> int:
    return sum(p.numel() * p.element_size() for p in policy.parameters())


def measure(arch: str, n: int, hidden: int, repeats: int, compile_mode: str) -> list[dict]:
    nodes = make_cluster(n, seed=0)
    policy = make_policy(arch, nodes, hidden)
    size = parameter_bytes(policy)

    def row(batch_size: int, variant: str, seconds: np.ndarray) -> dict:
        return {
            "arch": arch, "nodes": n, "hidden": hidden, "batch": batch_size, "variant": variant,
            "p50_us": float(np.median(seconds) * 1e6),
            "p95_us": float(np.percentile(seconds, 95) * 1e6),
            "decisions_per_s": float(batch_size / np.median(seconds)),
            "parameter_bytes": size,
        }  # fmt: skip

    rows = []
    for batch_size in (1, 1024):
        count = repeats if batch_size == 1 else 30  # a large batch is slow and steady
        sim = PlacementSim(nodes, batch=batch_size)
        obs = sim.reset(0)
        batch = policy.view(obs, sim.names)
        for name, fn in variants(policy, batch).items():
            rows.append(forward_row(name, fn, batch, count, row))
        if compile_mode != "off":
            rows.append(compiled_row(policy, batch, compile_mode, count, row))
        if batch_size == 1:  # the full serving path: numpy observation in, node index out
            serve = lambda o=obs, names=sim.names: policy.act(o, names)  # noqa: E731
            rows.append(row(1, "act() end to end", timed(serve, repeats)))
    return rows


def forward_row(name: str, fn, batch, count: int, row) -> dict:
    """Logits + argmax timed; a variant that cannot run (int8 when the forward reads a layer's
    weight directly, compile without a C++ compiler) becomes a row saying why, not a crash."""
    try:
        with torch.inference_mode():
            seconds = timed(lambda: fn(*batch).argmax(-1), count)
    except Exception as e:
        return failed_row(name, batch, row, why(e))
    return row(len(batch[0]), name, seconds)


def failed_row(name: str, batch, row, error: str) -> dict:
    failed = {"p50_us": None, "p95_us": None, "decisions_per_s": None, "error": error}
    return row(len(batch[0]), name, np.ones(1)) | failed


def compiled_row(policy, batch, mode: str, count: int, row) -> dict:
    name = "torch.compile" if mode == "default" else f"torch.compile {mode}"
    try:
        fn, compile_s = compiled(policy, batch, mode)
    except Exception as e:  # inductor raises many kinds: no compiler, codegen, lowering
        return failed_row(name, batch, row, why(e))
    return forward_row(name, fn, batch, count, row) | {"compile_s": compile_s}


def quantisation_cost(arch: str, steps: int) -> dict:
    """S of a trained policy, eager vs int8, on the same evaluation episodes."""
    nodes = make_cluster(8, seed=0)
    policy = make_policy(arch, nodes, 64)
    train(policy, nodes, None, PPOSettings(steps=steps))
    quantised = torch.ao.quantization.quantize_dynamic(policy, {torch.nn.Linear}, dtype=torch.qint8)
    seeds = evaluation_seeds(32)
    ref = reference(nodes, None, seeds)
    eager = ref.score(episode_returns(policy.agent(), nodes, None, seeds))
    cost = {"arch": arch, "train_steps": steps, "eager_score": eager}
    try:
        int8 = ref.score(episode_returns(quantised.agent(), nodes, None, seeds))
    except Exception as e:
        return cost | {"int8_score": None, "error": why(e)}
    return cost | {"int8_score": int8}


def table(rows: list[dict], costs: list[dict]) -> str:
    lines = [
        "| arch | N | batch | variant | p50 µs | p95 µs | decisions/s | params KiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['arch']} | {r['nodes']} | {r['batch']} | {r['variant']} |"
        if r.get("error"):
            lines.append(f"{head} failed: {r['error'][:80]} | | | |")
            continue
        lines.append(
            f"{head} {r['p50_us']:.0f} | {r['p95_us']:.0f} | {r['decisions_per_s']:,.0f} | "
            f"{r['parameter_bytes'] / 1024:.0f} |"
        )
    compile_times = [r["compile_s"] for r in rows if "compile_s" in r]
    if compile_times:
        lines += [
            "",
            f"torch.compile: first call (compilation) {min(compile_times):.1f}-"
            f"{max(compile_times):.1f} s per shape; not included in the times above.",
        ]
    lines += ["", "| arch | S eager | S int8 | change |", "|---|---|---|---|"]
    for c in costs:
        if c["int8_score"] is None:
            lines.append(f"| {c['arch']} | {c['eager_score']:.3f} | failed: {c['error'][:80]} | |")
            continue
        change = c["int8_score"] - c["eager_score"]
        lines.append(
            f"| {c['arch']} | {c['eager_score']:.3f} | {c['int8_score']:.3f} | {change:+.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", nargs="+", type=int, default=[8, 20, 64, 256])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--train-steps", type=int, default=100_000)
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs", "off"],
        help="torch.compile mode; on CPU the three modes measured within noise of each other",
    )
    parser.add_argument("--quick", action="store_true", help="N 8 and 20, 300 repeats, 20k steps")
    parser.add_argument("--out", default="benchmarks/results/decision")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.repeats, args.train_steps = [8, 20], 300, 20_000
    torch.set_num_threads(1)
    start, load = time.perf_counter(), os.getloadavg()[0]
    rows = [
        row
        for arch in ("node-set", "slot-mlp")
        for n in args.nodes
        for row in measure(arch, n, args.hidden, args.repeats, args.compile_mode)
    ]
    costs = [quantisation_cost(arch, args.train_steps) for arch in ("node-set", "slot-mlp")]
    write_json(
        f"{args.out}.json",
        {
            "args": vars(args),
            "machine": machine_info(),
            "seconds": time.perf_counter() - start,
            "load_average_at_start": load,
            "rows": rows,
            "quantisation": costs,
        },
    )
    text = table(rows, costs)
    with open(f"{args.out}.md", "w") as f:
        f.write(
            f"# Decision cost (hidden {args.hidden}, one torch thread, "
            f"torch.compile mode {args.compile_mode})\n\n"
            f"Load average (1 min) at the start: {load:.1f} on {os.cpu_count()} cores.\n\n"
            f"{text}\n"
        )
    print(text)


if __name__ == "__main__":
    main()
