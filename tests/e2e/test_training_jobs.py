"""spec.training.backend: job, end to end: the operator creates training Jobs, the harness
plays the kubelet for them (e2e/joblet.py), and the weights come back through the Job's result;
a Job that fails is recorded and retried with backoff while the serving version stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.cluster import Environment
from e2e.joblet import Joblet
from e2e.nodes import node_body
from e2e.wait import poll

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL, NAMESPACE = "metapolicy.dev", "v1alpha1", "metapolicies", "default"
TIMEOUT = 240


def add_node(env: Environment, name: str) -> None:
    spec = {"name": name, "cpu": 8, "memory": "32Gi", "latencyMs": 5, "labels": {"jobs": "yes"}}
    env.kube.core.create_node(node_body(spec, "jobs"))


def test_training_and_fine_tuning_run_in_jobs_and_a_failed_job_is_retried(
    e2e_env: Environment, tmp_path: Path
) -> None:
    if e2e_env.kube.real:
        pytest.skip("a real cluster runs its Jobs itself; the joblet plays the emulator's kubelet")
    policy = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MetaPolicy",
        "metadata": {"name": "e2e-jobs", "namespace": NAMESPACE},
        "spec": {
            "nodeSelector": {"matchLabels": {"jobs": "yes"}},
            "hiddenSize": 16,
            "training": {
                "budgetSteps": 2048,
                "backend": "job",
                "job": {"image": "local/metapolicy:dev", "deadlineSeconds": 600},
            },
            "adaptation": {"settleSeconds": 0, "budgetSteps": 512, "backoffSeconds": 1},
            "validation": {"episodes": 4, "minRetention": 0.0, "onInconclusive": "promote"},
            "workload": {"episodeTasks": 32},
        },
    }
    with Joblet(e2e_env.kube, tmp_path, fail_next=1) as joblet:
        for i in range(2):
            add_node(e2e_env, f"job-{i}")
        e2e_env.kube.custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, policy
        )
        trained = e2e_env.kube.wait_ready("e2e-jobs", 2, TIMEOUT)
        # the first Job failed (its pod never started): recorded, retried after the backoff
        failed, done = trained["history"][0], trained["history"][-1]
        assert failed["outcome"] == "failed" and "training_job_failed" in failed["reasonCodes"]
        assert done["trigger"] == "initial" and done["outcome"] == "promoted"
        assert trained["activeVersion"] == done["version"] == 1
        assert [joblet.results[name] for name in joblet.seen] == [
            "Failed PodFailed",
            "Complete",
        ]

        add_node(e2e_env, "job-2")
        adapted = e2e_env.kube.wait_ready("e2e-jobs", 3, TIMEOUT)
        stages = [h["trigger"] for h in adapted["history"]]
        assert stages[-2:] == ["zero-shot", "nodes"]  # served first; fine-tuned in a Job
        assert len(joblet.seen) == 3 and "fine-tune" in joblet.seen[-1]
        assert joblet.results[joblet.seen[-1]] == "Complete"

        # every Job, input and result is gone once read
        batch = joblet.batch
        poll(lambda: not batch.list_namespaced_job(NAMESPACE).items, 30, "Jobs cleaned up")
        names = {
            c.metadata.name for c in e2e_env.kube.core.list_namespaced_config_map(NAMESPACE).items
        }
        assert not any(n.endswith(("-input", "-result")) for n in names), names
