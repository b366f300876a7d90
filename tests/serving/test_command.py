"""`metapolicy serve` and `metapolicy run --serve` as processes against the emulator as a
process, over a kubeconfig: the code path of a real cluster, worker processes included."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from metapolicy_operator.cli import build_parser
from metapolicy_operator.serving.command import options_from
from tests.serving.conftest import pod_object

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


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def prioritize(port: int, names: list[str]) -> tuple[int, list]:
    body = json.dumps({"Pod": pod_object("p"), "Nodes": None, "NodeNames": names}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/scheduler/prioritize",
        data=body,
        headers={"Content-Type": "application/json", "Connection": "close"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


def sample(metrics: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name)
    )


def test_the_flags():
    args = build_parser().parse_args(
        ["serve", "-n", "a", "-n", "b", "--port", "9000", "--metrics-port", "9000",
         "--workers", "3", "--budget-ms", "12"]
    )  # fmt: skip
    options = options_from(args)
    assert options.namespaces == ("a", "b") and options.port == 9000
    assert options.metrics_port is None  # the same port: served there once
    assert options.budget_s == pytest.approx(0.012) and options.reuse_port
    defaults = options_from(build_parser().parse_args(["serve", "-A"]))
    assert (defaults.port, defaults.metrics_port, defaults.host) == (8090, 8091, "0.0.0.0")
    assert defaults.namespaces == () and defaults.budget_s == pytest.approx(0.030)
    assert build_parser().parse_args(["run", "--serve"]).serve_port == 8090


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


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def test_two_workers_share_the_ports_and_their_metrics(emulator, tmp_path):
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "metapolicy_operator.cli", "serve", "--kubeconfig", str(emulator),
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
         "--workers", "2", "--log-format", "json"],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:

        def both_started() -> bool:
            lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
            started = [x for x in lines if x["message"].startswith("placement server on")]
            return len(started) == 2

        poll(both_started, DEADLINE, f"two workers started; log: {log_path}")
        for p in (port, metrics_port):
            poll(lambda p=p: get(f"http://127.0.0.1:{p}/readyz")[0] == 200, DEADLINE, "ready")
        for _ in range(20):  # a new connection each: the kernel spreads them over the workers
            status, body = prioritize(port, ["x", "y"])
            assert status == 200 and body == [{"Host": "x", "Score": 0}, {"Host": "y", "Score": 0}]
        _, metrics = get(f"http://127.0.0.1:{metrics_port}/metrics")
        neutral = 'metapolicy_serve_requests_total{outcome="neutral",verb="prioritize"}'
        assert sample(metrics, neutral) == 20  # summed over both processes
    finally:
        assert stop(server) == 0, log_path.read_text()[-3000:]


def test_run_serve_puts_the_server_next_to_the_operator(emulator, tmp_path):
    serve_port, metrics_port = free_port(), free_port()
    log_path = tmp_path / "run.log"
    operator = subprocess.Popen(
        [sys.executable, "-m", "metapolicy_operator.cli", "run", "--kubeconfig", str(emulator),
         "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port), "--workers", "1",
         "--serve", "--serve-port", str(serve_port)],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{serve_port}"
        poll(lambda: get(f"{url}/readyz")[0] == 200, DEADLINE, f"ready; log: {log_path}")
        assert prioritize(serve_port, ["x"])[0] == 200
        assert "metapolicy_serve_requests_total" in get(f"{url}/metrics")[1]
        poll(lambda: get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 200, DEADLINE, "op")
    finally:
        stop(operator)
