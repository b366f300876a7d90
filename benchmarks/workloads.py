"""Workload benchmark: the learned policy against every heuristic (kube-scheduler's default
scoring first) on the synthetic model, the Alibaba GPU-v2023 trace and a generic-CSV trace;
trained on each and cross-evaluated (trained on synthetic, served on the traces); retention on
the Alibaba replay after the node set changes; and the model-predictive planner as a ceiling.

    python -m benchmarks.workloads            # 3 seeds, 64 episodes, both architectures
    python -m benchmarks.workloads --quick    # 1 seed, 32 episodes, planner on 8

The Alibaba pod list is data, not part of this repository: get `openb_pod_list_default.csv`
from github.com/alibaba/clusterdata (cluster-trace-gpu-v2023/csv/) and pass `--alibaba PATH`
(or set METAPOLICY_ALIBABA_TRACE); the default is ../shared/traces/alibaba-gpu-v2023/ next to
the repository. The generic-CSV trace is that pod list exported in the documented generic
format with only the required columns (no QoS, no GPU): the same pods without the attributes a
scheduler sees, which measures what those attributes are worth to the policy.

Writes <out>.json (raw numbers per seed, machine, git revision) and <out>.md (tables). Every
number is on `make_cluster(8)` (8 heterogeneous nodes), hidden 64, validation episodes that
no training or selection episode overlaps (for a trace: its last 25%, in time).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from benchmarks.common import bootstrap, machine_info, write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ALIBABA = REPO.parent / "shared/traces/alibaba-gpu-v2023/openb_pod_list_default.csv"
ARCHS = ("node-set", "slot-mlp")
DELTAS = (2, -2, 8)
NODES = 8


def workload_specs(args: argparse.Namespace) -> dict[str, str]:
    """Name -> `metapolicy.sources` spelling, the generic CSV written next to the run."""
    from metapolicy.trace_files import read_trace, write_generic

    generic = Path(args.scratch) / "alibaba-generic.csv"
    write_generic(read_trace(args.alibaba), generic, attributes=False)
    return {
        "synthetic": "synthetic",
        "alibaba": f"trace:alibaba-gpu-v2023:{args.alibaba}",
        "generic-csv": f"trace:generic:{generic}",
    }


def _setup():
    import torch

    torch.set_num_threads(1)


def _load_code() -> None:
    """Import everything a job uses when the worker starts: the code that runs is the code of
    that moment, even if the checkout changes during a long run."""
    import benchmarks.planner  # noqa: F401
    import metapolicy.adapt
    import metapolicy.sources
    import metapolicy.training  # noqa: F401

    _setup()


def train_job(
    arch: str, seed: int, name: str, specs: dict, episodes: int, steps: int | None
) -> dict:
    """Train on one workload; score on it and (from synthetic) on every other one."""
    _setup()
    from metapolicy.cluster import make_cluster
    from metapolicy.evaluation import episode_stats, evaluation_seeds, reference
    from metapolicy.sources import load_workload
    from metapolicy.training import TrainingSettings, train_initial

    nodes = make_cluster(NODES)
    workload = load_workload(specs[name])
    start = time.perf_counter()
    result = train_initial(
        nodes,
        TrainingSettings(architecture=arch, seed=seed, steps=steps, episodes=16, workload=workload),
    )
    wall = time.perf_counter() - start
    seeds = evaluation_seeds(episodes)
    served_on = {}
    for target in specs if name == "synthetic" else [name]:
        target_workload = workload if target == name else load_workload(specs[target])
        stats = episode_stats(result.policy.agent(), nodes, target_workload, seeds)
        ref = reference(nodes, target_workload, seeds)
        served_on[target] = {
            "returns": stats.returns.tolist(),
            "score": ref.score(stats.returns),
            "interval": list(bootstrap(ref, stats.returns)),
            **stats.summary(),
        }
    print(f"{arch} seed={seed} trained on {name}: S={served_on[name]['score']:.3f}", flush=True)
    return {
        "arch": arch,
        "seed": seed,
        "trained_on": name,
        "train_seconds": result.seconds,
        "wall_seconds": wall,
        "teacher": getattr(result, "teacher", None),
        "served_on": served_on,
        "policy": _weights(result.policy),
    }


def _weights(policy) -> dict:
    """The policy as safetensors (base64, so the partial results stay JSON for --resume)."""
    from metapolicy.checkpoint import policy_weights

    weights, meta = policy_weights(policy)
    return {"safetensors": base64.b64encode(weights).decode("ascii"), "meta": meta}


def _policy(weights: dict):
    from metapolicy.checkpoint import policy_from_weights

    return policy_from_weights(base64.b64decode(weights["safetensors"]), weights["meta"])


def retention_job(job: dict, delta: int, spec: str, episodes: int) -> dict:
    """Adapt a policy trained on the trace to a changed node set, validated on the trace."""
    _setup()
    from metapolicy.adapt import AdaptationSettings, adapt
    from metapolicy.cluster import resize_cluster
    from metapolicy.sources import load_workload

    backup = _policy(job["policy"])
    workload = load_workload(spec)
    nodes = resize_cluster(backup.nodes, delta, seed=job["seed"] + 101)
    start = time.perf_counter()
    result = adapt(
        backup,
        nodes,
        AdaptationSettings(
            episodes=episodes, min_retention=0.0, seed=job["seed"], workload=workload
        ),
    )
    return {
        "arch": job["arch"],
        "seed": job["seed"],
        "delta": delta,
        "retention": result.performance_retention,
        "interval": list(result.retention_interval),
        "candidate_score": result.candidate_score,
        "backup_score": result.backup_score,
        "seconds": time.perf_counter() - start,
    }


def reference_job(name: str, spec: str, episodes: int) -> dict:
    _setup()
    from metapolicy.cluster import make_cluster
    from metapolicy.evaluation import evaluation_seeds, reference_stats
    from metapolicy.sources import describe, load_workload

    workload = load_workload(spec)
    nodes = make_cluster(NODES)
    ref, stats = reference_stats(nodes, workload, evaluation_seeds(episodes))
    return {
        "workload": name,
        "describe": describe(workload),
        "best": ref.best,
        "agents": {
            agent: {"score": ref.score(s.returns), **s.summary()} for agent, s in stats.items()
        },
    }


def planner_job(name: str, spec: str, episodes: int, true_future: bool) -> dict:
    _setup()
    from benchmarks.planner import KNOWABLE, plan_job

    knows = KNOWABLE if true_future else ()
    return {"workload": name, **plan_job(spec, NODES, episodes, knows, options={})}


# ----- tables -------------------------------------------------------------------------------------
def _mean_sd(values: list[float], fmt: str = ".3f") -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(np.mean(values), fmt)} ± {format(np.std(values, ddof=1), fmt)}"


def agents_table(name: str, ref: dict, trained: list[dict], planner: list[dict]) -> str:
    lines = [
        f"### {name} ({_describe(ref['describe'])})",
        "",
        "| agent | S | cost ms/task | rejected | per seed S [90% interval] |",
        "|---|---|---|---|---|",
    ]
    for arch in ARCHS:
        rows = [t for t in trained if t["arch"] == arch and t["trained_on"] == name]
        if not rows:
            continue
        served = [r["served_on"][name] for r in rows]
        seeds = ", ".join(
            f"{s['score']:.3f} [{s['interval'][0]:.3f}, {s['interval'][1]:.3f}]" for s in served
        )
        lines.append(
            f"| **{arch}** (trained on it) | {_mean_sd([s['score'] for s in served])} | "
            f"{_mean_sd([s['cost_ms'] for s in served], '.1f')} | "
            f"{_mean_sd([100 * s['reject_rate'] for s in served], '.2f')}% | {seeds} |"
        )
    if name != "synthetic":
        for arch in ARCHS:
            rows = [t for t in trained if t["arch"] == arch and t["trained_on"] == "synthetic"]
            served = [r["served_on"][name] for r in rows if name in r["served_on"]]
            if served:
                lines.append(
                    f"| {arch} trained on synthetic | {_mean_sd([s['score'] for s in served])} | "
                    f"{_mean_sd([s['cost_ms'] for s in served], '.1f')} | "
                    f"{_mean_sd([100 * s['reject_rate'] for s in served], '.2f')}% | |"
                )
    for p in sorted(planner, key=lambda p: p["true_future"]):
        label = "planner, true future" if p["true_future"] else "planner, drawn futures"
        lines.append(
            f"| {label} ({p['episodes']} ep.) | {p['score']:.3f} | {p['cost_ms']:.1f} | "
            f"{100 * p['reject_rate']:.2f}% | |"
        )
    for agent, row in sorted(ref["agents"].items(), key=lambda kv: -kv[1]["score"]):
        mark = " (best)" if agent == ref["best"] else ""
        lines.append(
            f"| {agent}{mark} | {row['score']:.3f} | {row['cost_ms']:.1f} | "
            f"{100 * row['reject_rate']:.2f}% | |"
        )
    return "\n".join(lines)


def _describe(d: dict) -> str:
    if d.get("source") == "synthetic":
        return f"synthetic model, load {d['load']}"
    return f"{d['tasks']} tasks, {d['censored']} censored, episodes of {d['episodeTasks']}"


def retention_table(rows: list[dict]) -> str:
    lines = [
        "| arch | Δ | retention | interval (per seed) | S after | S before | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch in ARCHS:
        for delta in DELTAS:
            sel = [r for r in rows if r["arch"] == arch and r["delta"] == delta]
            if not sel:
                continue
            intervals = ", ".join(f"[{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]" for r in sel)
            lines.append(
                f"| {arch} | {delta:+d} | {_mean_sd([r['retention'] for r in sel])} | "
                f"{intervals} | {_mean_sd([r['candidate_score'] for r in sel])} | "
                f"{_mean_sd([r['backup_score'] for r in sel])} | "
                f"{_mean_sd([r['seconds'] for r in sel], '.0f')} |"
            )
    return "\n".join(lines)


def training_table(trained: list[dict]) -> str:
    lines = ["| trained on | arch | train s (mean, max) | teacher |", "|---|---|---|---|"]
    for name in sorted({t["trained_on"] for t in trained}):
        for arch in ARCHS:
            sel = [t for t in trained if t["arch"] == arch and t["trained_on"] == name]
            if sel:
                secs = [t["wall_seconds"] for t in sel]
                teachers = ", ".join(sorted({str(t["teacher"]) for t in sel}))
                lines.append(
                    f"| {name} | {arch} | {np.mean(secs):.0f}, {max(secs):.0f} | {teachers} |"
                )
    return "\n".join(lines)


def _key(kind: str, *parts) -> str:
    return ":".join([kind, *map(str, parts)])


def run_jobs(pool, specs: dict, args: argparse.Namespace, done: dict, partial: Path) -> dict:
    """Every job, each result saved to `partial` as it arrives (a crash keeps what finished,
    and `--resume` skips it); retention jobs start once their policy is trained."""
    results = {kind: [] for kind in ("reference", "planner", "train", "retention")}
    futures = {}

    def submit(key: str, fn, *fn_args) -> None:
        if key in done:
            collect(key, done[key])
        else:
            futures[pool.submit(fn, *fn_args)] = key

    def collect(key: str, result: dict) -> None:
        done[key] = result
        results[key.split(":")[0]].append(result)
        if key.startswith("train:") and result["trained_on"] == "alibaba":
            for delta in DELTAS:
                rkey = _key("retention", result["arch"], result["seed"], delta)
                submit(rkey, retention_job, result, delta, specs["alibaba"], args.episodes)

    for name, spec in specs.items():
        submit(_key("reference", name), reference_job, name, spec, args.episodes)
    for name in specs:
        for arch in args.archs:
            for seed in args.seeds:
                submit(
                    _key("train", name, arch, seed),
                    train_job, arch, seed, name, specs, args.episodes, args.train_steps,
                )  # fmt: skip
    for name, spec in specs.items():
        if name != "generic-csv":
            for truth in (False, True):
                key = _key("planner", name, truth)
                submit(key, planner_job, name, spec, args.planner_episodes, truth)
    while futures:
        finished, _ = wait(list(futures), return_when=FIRST_COMPLETED)
        for future in finished:
            collect(futures.pop(future), future.result())
            partial.write_text(json.dumps(done, default=float))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 32 episodes")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--episodes", type=int, help="validation episodes (default 64, quick 32)")
    parser.add_argument("--planner-episodes", type=int, help="default 64, quick 8")
    parser.add_argument(
        "--alibaba",
        default=os.environ.get("METAPOLICY_ALIBABA_TRACE", str(DEFAULT_ALIBABA)),
        help="openb_pod_list_default.csv of the Alibaba GPU-v2023 trace",
    )
    parser.add_argument("--train-steps", type=int, help="default: the architecture's default")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="skip jobs in <out>.partial.json")
    parser.add_argument("--out", default="benchmarks/results/workloads")
    args = parser.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.episodes = args.episodes or (32 if args.quick else 64)
    args.planner_episodes = args.planner_episodes or (8 if args.quick else 64)
    if not Path(args.alibaba).is_file():
        parser.error(f"no Alibaba pod list at {args.alibaba} (see --alibaba)")
    start = time.perf_counter()
    partial = Path(f"{args.out}.partial.json")
    done = json.loads(partial.read_text()) if args.resume and partial.exists() else {}
    resumed = sorted(done)  # jobs of an earlier run, not run again
    with tempfile.TemporaryDirectory() as scratch:
        args.scratch = scratch
        specs = workload_specs(args)
        with ProcessPoolExecutor(args.workers, initializer=_load_code) as pool:
            results = run_jobs(pool, specs, args, done, partial)
    references = {r["workload"]: r for r in results["reference"]}
    trained, planners, retention = results["train"], results["planner"], results["retention"]
    for t in trained:
        t.pop("policy", None)
    data = {
        "args": {k: v for k, v in vars(args).items() if k != "scratch"},
        "machine": machine_info(),
        "seconds": time.perf_counter() - start,
        "resumed": resumed,
        "references": references,
        "trained": trained,
        "planner": planners,
        "retention": retention,
    }
    write_json(f"{args.out}.json", data)
    partial.unlink(missing_ok=True)
    again = f", {len(resumed)} jobs of an earlier run resumed" if resumed else ""
    sections = [
        f"# Workloads ({NODES} nodes, hidden 64, seeds {args.seeds}, {args.episodes} validation "
        f"episodes, {data['seconds'] / 60:.0f} min{again})",
        "S: 0 = random, 1 = the best heuristic on that workload; cost: mean placement cost per "
        "task in ms, rejections included; rejected: share of tasks that fit nowhere they were "
        "sent. Planner rows: the model-predictive reference (benchmarks/planner.py), not served.",
    ]
    for name in specs:
        sections.append(
            agents_table(
                name,
                references[name],
                trained,
                [p for p in planners if p["workload"] == name],
            )
        )
    sections += [
        "## Retention on the Alibaba replay (adapted with the default settings, validated on "
        "the trace's validation windows)",
        retention_table(retention),
        "## Training time (wall seconds, imitation and selection included)",
        training_table(trained),
    ]
    text = "\n\n".join(sections) + "\n"
    Path(f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
