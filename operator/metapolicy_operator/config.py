"""Operator settings from the environment, so `metapolicy run` and a plain `kopf run -m
metapolicy_operator.handlers` behave the same (the CLI only sets these variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass


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
