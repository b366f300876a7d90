"""`metapolicy serve`, the placement server, as a process of the e2e system.

Like the operator (`e2e.cluster.Operator`) it connects only through a kubeconfig and runs in
its own process group, so a kill takes its worker processes with it. It listens on two free
127.0.0.1 ports: the extender verbs (plus probes and /metrics) and the metrics port, as in
the Deployment. `start()` returns once /readyz answers 200 (its caches hold their first lists).
"""

from __future__ import annotations

import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from e2e.cluster import START_TIMEOUT, ManagedProcess
from e2e.prometheus import free_port
from e2e.wait import E2EFailure, poll

_LISTENING = re.compile(r"placement server on \S+:(\d+)")

#: The per-request budget in e2e runs. The Deployment's 30 ms is for a server with its own
#: cores; here four Python processes share two, and a request that waits for the CPU past its
#: budget is answered by the fallback. e2e checks who decides, not how fast (that is
#: benchmarks/serving.py's job), so the budget is generous; the fallback path has its own tests.
E2E_BUDGET_MS = 1000.0


class Server:
    """`metapolicy serve` as a process; start it again after a stop or a kill."""

    def __init__(
        self, kubeconfig: Path, workdir: Path, workers: int = 1, budget_ms: float = E2E_BUDGET_MS
    ) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.workers = workers
        self.budget_ms = budget_ms
        self.process: ManagedProcess | None = None
        self.url: str | None = None  # http://127.0.0.1:PORT: the extender's urlPrefix host
        self.metrics_url: str | None = None  # the metrics port's /metrics
        self.ports: tuple[int, int] | None = None
        self.starts = 0

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.process is not None and self.process.running():
            raise RuntimeError("the server is already running")
        self.starts += 1
        if self.ports is None:  # kept across restarts: the scheduler's urlPrefix stays valid
            self.ports = (free_port(), free_port())
        port, metrics_port = self.ports
        argv = [
            sys.executable, "-m", "metapolicy_operator.cli", "serve",
            "--kubeconfig", str(self.kubeconfig),
            "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
            "--workers", str(self.workers), "--budget-ms", str(self.budget_ms),
        ]  # fmt: skip
        log = self.workdir / f"serve-{self.starts}.log"
        self.process = ManagedProcess("metapolicy serve", argv, log)
        self.process.wait_for_log(_LISTENING, timeout)
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        poll(self.ready, timeout, "the server to be ready (/readyz)", describe=self.log_tail)

    def ready(self) -> bool:
        if self.process is None or not self.process.running():
            code = self.process.popen.returncode if self.process else None
            raise E2EFailure(f"metapolicy serve exited with code {code}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> int | None:
        return self.process.stop() if self.process is not None else None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def log_tail(self, chars: int = 3000) -> str:
        return self.process.log_tail(chars) if self.process is not None else ""

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
        return metric(self.metrics_url or "", name, labels)


def metric(url: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of the samples called `name` at a /metrics URL, filtered by labels."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
    except (urllib.error.URLError, OSError) as error:
        raise E2EFailure(f"cannot read {url}: {error}") from None
    want = dict(labels or {})
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and want.items() <= sample.labels.items()
    )
