"""`metapolicy run`: start the operator against a cluster (kubeconfig or in-cluster)."""

from __future__ import annotations

import argparse
import logging
import os
import random

import kopf

from metapolicy_operator.config import add_cluster_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cluster_arguments(parser, "watch")
    # Defaults come from the environment so that the METAPOLICY_* variables keep working.
    env = os.environ
    parser.add_argument("--metrics-host", default=env.get("METAPOLICY_METRICS_HOST", "0.0.0.0"))
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env.get("METAPOLICY_METRICS_PORT", 8080)),
        help="/metrics and /healthz",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(env.get("METAPOLICY_WORKERS", 2)),
        help="trainings/adaptations at once",
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="run with kopf peering under this name (HA: one active replica); default standalone",
    )
    parser.add_argument(
        "--priority",
        type=int,
        help="peering priority; the highest runs, the others wait. Default with --peering: "
        "random, so identical replicas never tie (kopf pauses every peer on a tie)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="also run the placement server (as `metapolicy serve`) in this process",
    )
    parser.add_argument("--serve-port", type=int, default=8090, help="its port, with --serve")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    """The CLI flags become the environment the handlers read, so that `kopf run -m
    metapolicy_operator.handlers` with the same variables behaves identically."""
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = os.environ["METAPOLICY_KUBECONFIG"] = args.kubeconfig
    os.environ["METAPOLICY_METRICS_HOST"] = args.metrics_host
    os.environ["METAPOLICY_METRICS_PORT"] = str(args.metrics_port)
    os.environ["METAPOLICY_WORKERS"] = str(args.workers)
    log_format = kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN
    kopf.configure(verbose=args.verbose, log_format=log_format)
    logging.getLogger("metapolicy_operator").setLevel(
        logging.DEBUG if args.verbose else logging.INFO
    )

    import metapolicy_operator.handlers  # noqa: F401  (registers the handlers)

    priority = args.priority
    if args.peering and priority is None:
        priority = random.randint(1, 2**31 - 1)
    server = None
    if args.serve:  # small installs: scheduling and training in one process
        from metapolicy_operator.serving.command import start_in_thread

        server = start_in_thread(args.kubeconfig, args.namespace, args.serve_port)
    try:
        kopf.run(
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=priority,
            namespaces=args.namespace,
            clusterwide=not args.namespace,
        )
    finally:
        if server is not None:
            server.stop()
    return 0
