"""`metapolicy run`: start the operator against a cluster (kubeconfig or in-cluster)."""

from __future__ import annotations

import argparse
import logging
import os

import kopf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)"
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch MetaPolicies here (repeatable)",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (default)"
    )
    parser.add_argument("--metrics-host", default="0.0.0.0")
    parser.add_argument("--metrics-port", type=int, default=8080, help="/metrics and /healthz")
    parser.add_argument("--workers", type=int, default=2, help="trainings/adaptations at once")
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="run with kopf peering under this name (HA: one active replica); default standalone",
    )
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

    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        namespaces=args.namespace,
        clusterwide=not args.namespace,
    )
    return 0
