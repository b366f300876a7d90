"""`metapolicy run` as its own process against the emulator as its own process, over a
kubeconfig: the same code path as on a real cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import kubernetes
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not true within {timeout}s: {what}")


@pytest.fixture
def emulator(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "e2e.embedded", "--port", "0",
         "--kubeconfig", str(kubeconfig), "--crd", str(ROOT / "crds/metapolicy.yaml")],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    line = process.stdout.readline()
    assert line.startswith("READY "), line
    yield kubeconfig
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)


def test_metapolicy_run_serves_a_policy_over_a_kubeconfig(emulator, tmp_path):
    port = free_port()
    log = (tmp_path / "operator.log").open("w")
    operator = subprocess.Popen(
        [sys.executable, "-m", "metapolicy_operator.cli", "run", "--kubeconfig", str(emulator),
         "--metrics-host", "127.0.0.1", "--metrics-port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        api = kubernetes.config.new_client_from_config(config_file=str(emulator))
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        for i in range(2):
            core.create_node({
                "metadata": {"name": f"edge-{i}"},
                "status": {"allocatable": {"cpu": "4", "memory": "16Gi"},
                           "conditions": [{"type": "Ready", "status": "True"}]},
            })  # fmt: skip
        spec = {
            "hiddenSize": 16,
            "training": {"budgetSteps": 2048},
            "validation": {"episodes": 4},
            "workload": {"episodeTasks": 32},
        }
        custom.create_namespaced_custom_object(
            "metapolicy.dev", "v1alpha1", "default", "metapolicies",
            {"apiVersion": "metapolicy.dev/v1alpha1", "kind": "MetaPolicy",
             "metadata": {"name": "web"}, "spec": spec},
        )  # fmt: skip

        def ready():
            body = custom.get_namespaced_custom_object(
                "metapolicy.dev", "v1alpha1", "default", "metapolicies", "web"
            )
            return body.get("status", {}).get("phase") == "Ready" and body["status"]

        status = poll(ready, DEADLINE, "policy Ready")
        assert status["nodes"] == ["edge-0", "edge-1"]
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'metapolicy_active_version{policy="default/web"} 1.0' in metrics
    finally:
        operator.send_signal(signal.SIGTERM)
        code = operator.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "operator.log").read_text()[-3000:]
