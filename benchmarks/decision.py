"""Decision cost: one placement decision at batch 1 and throughput at batch 1024, for both
architectures and several cluster sizes; memory of the loaded policy; eager vs TorchScript vs
int8 dynamic quantisation, and the score the quantised policy costs.

    python -m benchmarks.decision --out benchmarks/results/decision
"""

from __future__ import annotations

import argparse
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
    """Forward functions on fixed tensors: eager, TorchScript (traced), int8 dynamic."""
    quantised = torch.ao.quantization.quantize_dynamic(policy, {torch.nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        traced = torch.jit.trace(policy, batch, check_trace=False)
    return {"eager": policy, "torchscript": traced, "int8": quantised}


def parameter_bytes(policy) -> int:
    return sum(p.numel() * p.element_size() for p in policy.parameters())


def measure(arch: str, n: int, hidden: int, repeats: int) -> list[dict]:
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
            with torch.inference_mode():
                seconds = timed(lambda fn=fn, b=batch: fn(*b)[0].argmax(-1), count)
            rows.append(row(batch_size, name, seconds))
        if batch_size == 1:  # the full serving path: numpy observation in, node index out
            serve = lambda o=obs, names=sim.names: policy.act(o, names)  # noqa: E731
            rows.append(row(1, "act() end to end", timed(serve, repeats)))
    return rows


def quantisation_cost(arch: str, steps: int) -> dict:
    """S of a trained policy, eager vs int8, on the same evaluation episodes."""
    nodes = make_cluster(8, seed=0)
    policy = make_policy(arch, nodes, 64)
    train(policy, nodes, None, PPOSettings(steps=steps))
    quantised = torch.ao.quantization.quantize_dynamic(policy, {torch.nn.Linear}, dtype=torch.qint8)
    seeds = evaluation_seeds(32)
    ref = reference(nodes, None, seeds)
    eager = ref.score(episode_returns(policy.agent(), nodes, None, seeds))
    q = ref.score(episode_returns(quantised.agent(), nodes, None, seeds))
    return {"arch": arch, "train_steps": steps, "eager_score": eager, "int8_score": q}


def table(rows: list[dict], costs: list[dict]) -> str:
    lines = [
        "| arch | N | batch | variant | p50 µs | p95 µs | decisions/s | params KiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['nodes']} | {r['batch']} | {r['variant']} | {r['p50_us']:.0f} | "
            f"{r['p95_us']:.0f} | {r['decisions_per_s']:,.0f} | {r['parameter_bytes'] / 1024:.0f} |"
        )
    lines += ["", "| arch | S eager | S int8 | change |", "|---|---|---|---|"]
    for c in costs:
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
    parser.add_argument("--out", default="benchmarks/results/decision")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [
        row
        for arch in ("node-set", "slot-mlp")
        for n in args.nodes
        for row in measure(arch, n, args.hidden, args.repeats)
    ]
    costs = [quantisation_cost(arch, args.train_steps) for arch in ("node-set", "slot-mlp")]
    write_json(
        f"{args.out}.json",
        {"args": vars(args), "machine": machine_info(), "rows": rows, "quantisation": costs},
    )
    text = table(rows, costs)
    with open(f"{args.out}.md", "w") as f:
        f.write(f"# Decision cost (hidden {args.hidden}, one torch thread)\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
