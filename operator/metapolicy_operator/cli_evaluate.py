"""`metapolicy evaluate`, and the `--workload` option of `train` and `adapt`.

`evaluate` scores the active policy and every heuristic on the same paired validation
episodes of a workload: S, mean placement cost per task and rejection rate, so a user sees how
big a difference is, not only its sign.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from metapolicy.checkpoint import policy_from_checkpoint
from metapolicy.cluster import InvalidNodeProfile, NodeProfile, make_cluster
from metapolicy.evaluation import episode_stats, evaluation_seeds, reference_stats
from metapolicy.sources import InvalidWorkloadSource, describe, load_workload, parse_choice
from metapolicy.store import CheckpointError, FilesystemStore
from metapolicy.traces import Workload

WORKLOAD_HELP = (
    "synthetic (default), trace:PATH (generic CSV or Alibaba GPU-v2023 pod list, told apart by "
    "the header), trace:FORMAT:PATH, or observed:STORE (the trace recorded in a checkpoint "
    "directory)"
)


class BadInput(Exception):
    """Input the command cannot use: reported as one line on stderr, exit code 2."""


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", default="synthetic", help=WORKLOAD_HELP)
    p.add_argument(
        "--load",
        type=float,
        default=0.6,
        help="mean cpu demand / capacity: of the synthetic model, or a trace's replay target",
    )
    p.add_argument("--episode-tasks", type=int, default=256, help="tasks per simulated episode")


def load_from_args(args: argparse.Namespace) -> Workload:
    try:
        return load_workload(parse_choice(args.workload), args.episode_tasks, args.load)
    except (InvalidWorkloadSource, ValueError) as error:
        raise BadInput(str(error)) from None


def workload_from_args(args: argparse.Namespace) -> Workload:
    """For train and adapt: a bad workload ends the command with one line and exit code 2."""
    try:
        return load_from_args(args)
    except BadInput as error:
        print(f"metapolicy: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _nodes(args: argparse.Namespace, policy_nodes: list[NodeProfile]) -> list[NodeProfile]:
    if args.nodes_file:
        import yaml

        try:
            data = yaml.safe_load(Path(args.nodes_file).read_text())
            return [NodeProfile.from_dict(item) for item in data]
        except (OSError, yaml.YAMLError, InvalidNodeProfile, TypeError, KeyError) as error:
            raise BadInput(f"cannot read nodes from {args.nodes_file}: {error}") from None
    if args.nodes is not None:
        return make_cluster(args.nodes, seed=args.cluster_seed)
    return policy_nodes


def evaluate(args: argparse.Namespace) -> dict:
    store_path = Path(args.store)
    if not store_path.is_dir():
        raise BadInput(f"no checkpoint store at {store_path}")
    if args.episodes < 2:
        raise BadInput(f"--episodes {args.episodes}: at least 2 are needed")
    try:
        loaded = FilesystemStore(store_path).load_active()
    except CheckpointError as error:
        raise BadInput(str(error)) from None
    if loaded is None:
        raise BadInput(f"no valid checkpoint in {store_path}; run `metapolicy train` first")
    version, checkpoint = loaded
    policy = policy_from_checkpoint(checkpoint)
    workload = load_from_args(args)
    nodes = _nodes(args, policy.nodes)
    seeds = evaluation_seeds(args.episodes)
    ref, stats = reference_stats(nodes, workload, seeds)
    own = episode_stats(policy.agent(), nodes, workload, seeds)

    def row(returns: np.ndarray, summary: dict) -> dict:
        return {"score": ref.score(returns)} | summary

    return {
        "policy": row(own.returns, own.summary()) | {"version": version},
        "heuristics": {
            name: row(stats[name].returns, stats[name].summary()) for name in ref.heuristics
        },
        "best_heuristic": ref.best,
        "workload": describe(workload),
        "nodes": len(nodes),
        "episodes": len(seeds),
    }


def render(result: dict) -> str:
    lines = [
        f"{result['episodes']} paired validation episodes on {result['nodes']} nodes, workload "
        f"{json.dumps(result['workload'])}",
        f"{'agent':<16} {'S':>6} {'cost ms/task':>13} {'rejected':>9}",
    ]
    rows = [("policy v" + str(result["policy"]["version"]), result["policy"])]
    rows += sorted(result["heuristics"].items(), key=lambda item: -item[1]["score"])
    for name, r in rows:
        lines.append(
            f"{name:<16} {r['score']:>6.3f} {r['cost_ms']:>13.1f} {r['reject_rate']:>8.1%}"
        )
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    try:
        result = evaluate(args)
    except BadInput as error:
        print(f"metapolicy evaluate: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score the active policy and every heuristic on the same episodes"
    )
    p.add_argument("--store", required=True, help="checkpoint directory")
    add_workload_arguments(p)
    p.add_argument(
        "--nodes", type=int, help="a generated cluster of this size (default: the policy's nodes)"
    )
    p.add_argument("--nodes-file", help="YAML list of {name, cpu, memory_mib, latency_ms}")
    p.add_argument("--cluster-seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=64, help="paired validation episodes")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=cmd_evaluate)
