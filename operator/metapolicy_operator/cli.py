"""`metapolicy` command line: train, adapt, inspect and list strategies against a checkpoint
directory, run the demo, and `run` the Kubernetes operator."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from metapolicy.adapt import ON_INCONCLUSIVE, AdaptationSettings, StageResult, adapt
from metapolicy.checkpoint import policy_from_checkpoint, policy_to_checkpoint, stored_record
from metapolicy.cluster import (
    InvalidNodeProfile,
    NodeProfile,
    TooManyNodes,
    check_node_set,
    check_unique,
    make_cluster,
    resize_cluster,
)
from metapolicy.device import DEVICES, DeviceUnavailable
from metapolicy.policy import ARCHITECTURES, check_capacity
from metapolicy.ppo import FREEZE_MODES
from metapolicy.store import CheckpointError, FilesystemStore
from metapolicy.strategies import ESCALATION, STRATEGIES, choose_strategy
from metapolicy.timeline import progress, render
from metapolicy.training import DEFAULT_STEPS, TrainingSettings, train_initial
from metapolicy.workload import InvalidWorkload
from metapolicy_operator import cli_evaluate
from metapolicy_operator.cli_evaluate import BadInput
from metapolicy_operator.job_command import add_arguments as job_arguments
from metapolicy_operator.main import add_arguments
from metapolicy_operator.serving.command import add_arguments as serve_arguments

#: What a user's input can get wrong: the command ends with one line on stderr and exit code 2.
USER_ERRORS = (
    BadInput,
    InvalidNodeProfile,
    TooManyNodes,
    InvalidWorkload,
    CheckpointError,
    DeviceUnavailable,
)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def load_nodes(args: argparse.Namespace) -> list[NodeProfile]:
    if not args.nodes_file:
        return make_cluster(args.nodes, seed=args.cluster_seed)
    path = Path(args.nodes_file)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise BadInput(f"cannot read nodes file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise BadInput(f"nodes file {path} is not YAML: {error}".splitlines()[0]) from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise BadInput(
            f"nodes file {path} must be a YAML list of {{name, cpu, memory_mib, latency_ms}}, "
            f"got {type(data).__name__}"
        )
    return check_unique(NodeProfile.from_dict(item) for item in data)


def existing_store(path: str) -> FilesystemStore:
    """A store that must exist already (adapt, inspect): a typo must not create an empty one."""
    if not Path(path).is_dir():
        raise BadInput(f"no checkpoint store at {path}; run `metapolicy train --store {path}`")
    return FilesystemStore(path)


def removed_nodes(known: list[NodeProfile], remove: list[str]) -> list[NodeProfile]:
    names = [n.name for n in known]
    unknown = [name for name in remove if name not in names]
    if not unknown and len(set(remove)) >= len(names):
        raise BadInput(f"cannot remove every node: a policy needs at least one ({len(names)})")
    if unknown:
        raise BadInput(
            f"cannot remove {', '.join(unknown)}: the active policy's nodes are {', '.join(names)}"
        )
    return resize_cluster(known, -len(remove), remove=remove)


def within_limits(nodes: list[NodeProfile], max_nodes: int, architecture: str) -> None:
    """Refuse a node set before any progress line is printed, saying which flag helps."""
    check_capacity(architecture, len(nodes))
    try:
        check_node_set(nodes, max_nodes)
    except TooManyNodes as error:
        raise TooManyNodes(f"{error}; raise it with --max-nodes") from None


def cmd_train(args: argparse.Namespace) -> int:
    nodes = load_nodes(args)
    settings = TrainingSettings(
        architecture=args.architecture,
        hidden=args.hidden,
        steps=args.steps,
        seed=args.seed,
        max_nodes=args.max_nodes,
        device=args.device,
        workload=cli_evaluate.workload_from_args(args),
    )
    within_limits(nodes, settings.max_nodes, settings.architecture)
    bar = progress("train")
    result = train_initial(nodes, settings, lambda f: bar("ppo", f))
    store = FilesystemStore(args.store)
    record = result.record().with_context(trigger="initial")
    version = store.save(policy_to_checkpoint(result.policy, record=record))
    store.set_active(version)
    print(
        f"trained {args.architecture} on {len(nodes)} nodes in {result.seconds:.1f}s: "
        f"S={result.score:.3f} (best heuristic: {result.best_heuristic}); version {version}"
    )
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    """Serve first, as the operator does: the zero-shot candidate is stored (and made active if
    it passes) before the fine-tune starts; the fine-tuned one replaces it only if better."""
    store = existing_store(args.store)
    loaded = store.load_active()
    if loaded is None:
        raise BadInput(f"no valid checkpoint in {args.store}; run `metapolicy train` first")
    version, checkpoint = loaded
    backup = policy_from_checkpoint(checkpoint)
    if args.nodes_file:
        new_nodes = load_nodes(args)
    elif args.remove:
        new_nodes = removed_nodes(backup.nodes, args.remove)
    else:
        new_nodes = resize_cluster(backup.nodes, args.add, seed=args.cluster_seed)
    settings = AdaptationSettings(
        strategy=args.strategy,
        budget_steps=args.budget,
        freeze=args.freeze,
        episodes=args.episodes,
        min_retention=args.min_retention,
        on_inconclusive=args.on_inconclusive,
        max_nodes=args.max_nodes,
        seed=args.seed,
        device=args.device,
        workload=cli_evaluate.workload_from_args(args),
    )
    within_limits(new_nodes, settings.max_nodes, backup.architecture)
    started = time.perf_counter()
    rows, served = [], {}

    def store_stage(stage: StageResult, **context) -> int:
        record = stage.record.with_context(parent_version=version, **context)
        stored = store.save(policy_to_checkpoint(stage.candidate, record=record))
        if stage.promoted:
            store.set_active(stored)
            served.setdefault("time_to_serve", time.perf_counter() - started)
        rows.append(record.with_context(version=stored, time_to_serve=served.get("time_to_serve")))
        return stored

    def serve_zero_shot(stage: StageResult) -> None:
        served["version"] = store_stage(stage, trigger="zero-shot")

    quiet = args.json
    result = adapt(
        backup,
        new_nodes,
        settings,
        on_progress=None if quiet else progress("adapt"),
        on_zero_shot=serve_zero_shot,
    )
    if result.final is not result.zero_shot:
        store_stage(result.final, trigger="nodes")
    final = rows[-1]
    if args.json:
        print(json.dumps(final.to_json(camel=False), indent=2))
    else:
        print(render([r.to_json() for r in rows]))
        print(f"stored versions {', '.join(str(r.version) for r in rows)}; active {store.active()}")
    return 0 if result.promoted else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    store = existing_store(args.store)
    active = store.active()
    for version in store.versions():
        try:
            manifest = store.manifest(version)
        except Exception as error:  # a corrupt version is reported, not fatal
            print(f"v{version}  CORRUPT: {error}")
            continue
        meta = manifest["meta"]
        marker = "*" if version == active else " "
        record = stored_record(meta)
        outcome = f"{record.trigger or ''}:{record.outcome}" if record else "-"
        print(
            f"{marker}v{version}  {manifest['created']}  {meta['architecture']:<9} "
            f"slots={meta['slots']:<3} {outcome:<24} nodes={','.join(meta['node_names'])}"
        )
    if args.json and active is not None:
        print(json.dumps(store.manifest(active), indent=2))
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    print("strategies:", ", ".join(STRATEGIES))
    print("escalation after a rollback:", " -> ".join(ESCALATION))
    print("auto: 1-2 changed slots zero_padding, 3-5 weight_interpolation,")
    print("      6-10 knowledge_distillation, more than 10 attention_based")
    if args.old is not None and args.new is not None:
        old = [f"n{i}" for i in range(args.old)]
        new = [f"n{i}" for i in range(args.new)]
        print(f"{args.old} -> {args.new} nodes: {choose_strategy(old, new)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from metapolicy_operator.offline_demo import run_offline_demo

    return run_offline_demo(fast=args.fast)


def cmd_run(args: argparse.Namespace) -> int:
    from metapolicy_operator.main import run

    return run(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from metapolicy_operator.serving.command import run

    return run(args)


def cmd_job(args: argparse.Namespace) -> int:
    from metapolicy_operator.job_command import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metapolicy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # The library's defaults, which a test keeps equal to the CRD's: written once.
    trained, adapted = TrainingSettings(), AdaptationSettings()

    def scale_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--max-nodes",
            type=positive,
            default=adapted.max_nodes,
            help="refuse more nodes than this (spec.maxNodes; node-set: up to 5000, slot-mlp 256)",
        )
        p.add_argument(
            "--device",
            choices=DEVICES,
            default=adapted.device,
            help="where the policy trains (auto: a CUDA GPU when torch sees one, else the CPU)",
        )

    def cluster_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--nodes", type=int, default=8, help="generated cluster size")
        p.add_argument("--nodes-file", help="YAML list of {name, cpu, memory_mib, latency_ms}")
        p.add_argument("--cluster-seed", type=int, default=0)

    p = sub.add_parser("train", help="train a fresh policy and store it as the active version")
    cluster_args(p)
    p.add_argument("--store", required=True, help="checkpoint directory")
    p.add_argument("--architecture", choices=list(ARCHITECTURES), default=trained.architecture)
    p.add_argument("--hidden", type=int, default=trained.hidden)
    steps = ", ".join(f"{n} for {arch}" for arch, n in DEFAULT_STEPS.items())
    p.add_argument("--steps", type=int, help=f"default: {steps}")
    p.add_argument("--seed", type=int, default=trained.seed)
    scale_args(p)
    cli_evaluate.add_workload_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("adapt", help="adapt the active policy to a changed node set")
    cluster_args(p)
    p.add_argument("--store", required=True)
    p.add_argument("--add", type=int, default=0, help="add this many generated nodes")
    p.add_argument("--remove", nargs="*", default=[], help="remove these nodes by name")
    p.add_argument("--strategy", choices=["auto", *STRATEGIES], default=adapted.strategy)
    p.add_argument(
        "--budget", type=int, default=adapted.budget_steps, help="fine-tune environment steps"
    )
    p.add_argument("--freeze", choices=FREEZE_MODES, default=adapted.freeze)
    p.add_argument("--episodes", type=int, default=adapted.episodes)
    p.add_argument("--min-retention", type=float, default=adapted.min_retention)
    p.add_argument(
        "--on-inconclusive",
        choices=ON_INCONCLUSIVE,
        default=adapted.on_inconclusive,
        help="when the retention interval straddles --min-retention (pause: store, keep serving)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the final adaptation record (time_to_serve, adaptation_time, ...)",
    )
    p.add_argument("--seed", type=int, default=adapted.seed)
    scale_args(p)
    cli_evaluate.add_workload_arguments(p)
    p.set_defaults(func=cmd_adapt)
    cli_evaluate.register(sub)

    p = sub.add_parser("inspect", help="list stored versions (* = active)")
    p.add_argument("--store", required=True)
    p.add_argument("--json", action="store_true", help="also print the active manifest")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("strategies", help="list resize strategies and the auto table")
    p.add_argument("--old", type=int)
    p.add_argument("--new", type=int)
    p.set_defaults(func=cmd_strategies)

    p = sub.add_parser("demo", help="the scaling demo (offline pipeline)")
    p.add_argument("--fast", action="store_true", help="tiny budgets, for a smoke run")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run the Kubernetes operator")
    add_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("job", help="the work of a training Job (the operator creates these)")
    job_arguments(p)
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("serve", help="run the placement server (kube-scheduler extender)")
    serve_arguments(p)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    torch.set_num_threads(1)  # small networks: one thread is ~10x faster than two
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as error:
        print(f"metapolicy {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
