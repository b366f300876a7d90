"""Operator settings from the environment, so `metapolicy run` and a plain `kopf run -m
metapolicy_operator.handlers` behave the same (the CLI only sets these variables)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import kubernetes


@dataclass(frozen=True)
class OperatorConfig:
    kubeconfig: str | None = None  # None: in-cluster config, else $KUBECONFIG / ~/.kube/config
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8080  # 0 picks a free port (tests)
    workers: int = 2  # trainings/adaptations running at once, across all policies
    retry_seconds: float = 30.0  # after an unexpected error
    job_image: str | None = None  # image of training Jobs when the spec names none

    @classmethod
    def from_env(cls) -> OperatorConfig:
        env = os.environ
        return cls(
            kubeconfig=env.get("METAPOLICY_KUBECONFIG") or env.get("KUBECONFIG") or None,
            metrics_host=env.get("METAPOLICY_METRICS_HOST", cls.metrics_host),
            metrics_port=int(env.get("METAPOLICY_METRICS_PORT", cls.metrics_port)),
            workers=int(env.get("METAPOLICY_WORKERS", cls.workers)),
            retry_seconds=float(env.get("METAPOLICY_RETRY_SECONDS", cls.retry_seconds)),
            job_image=env.get("METAPOLICY_JOB_IMAGE") or None,
        )


def api_client(kubeconfig: str | None) -> kubernetes.client.ApiClient:
    """A client for the cluster: an explicit kubeconfig if given, else in-cluster, else
    $KUBECONFIG / ~/.kube/config. The operator, the server and a training Job agree on it."""
    if kubeconfig:
        return kubernetes.config.new_client_from_config(config_file=kubeconfig)
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        return kubernetes.config.new_client_from_config()


def add_cluster_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--kubeconfig and the namespace scope (-n, repeatable, or -A) of a long-running command;
    `what`: what it does with a namespace's MetaPolicies ("watch", "serve")."""
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)"
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help=f"{what} the MetaPolicies of this namespace (repeatable)",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="every namespace (default)"
    )
