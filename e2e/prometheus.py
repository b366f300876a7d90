"""A real Prometheus server as a process, scraping the processes under test.

It scrapes the operator's `/metrics` every second as the job `metapolicy-operator` (and the
placement server's as `metapolicy-serve`, the jobs the ServiceMonitors name) and evaluates
the project's alert rules (manifests/prometheus/rules.yaml) every second, so e2e can check
that the dashboard's and the alerts' expressions find the series the processes export.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import ROOT, START_TIMEOUT, STOP_TIMEOUT, ManagedProcess
from e2e.wait import E2EFailure, poll

RULES = ROOT / "manifests" / "prometheus" / "rules.yaml"
JOB = "metapolicy-operator"
SERVE_JOB = "metapolicy-serve"
PROMETHEUS = "prometheus"
PROMTOOL = "promtool"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def binary(name: str) -> str | None:
    """The path of `prometheus` or `promtool` on PATH (or in /usr/bin), if installed."""
    return shutil.which(name) or shutil.which(name, path="/usr/bin")


@dataclass
class Prometheus:
    url: str  # http://127.0.0.1:<port>
    process: ManagedProcess

    def api(self, path: str, params: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
        """The `data` of a Prometheus HTTP API answer; fails on an error status."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=timeout) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise E2EFailure(f"Prometheus {path} {params}: {body.get('errorType')}: "
                             f"{body.get('error')}")  # fmt: skip
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (a vector's samples; a scalar as one item)."""
        data = self.api("/api/v1/query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("/api/v1/targets")["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        """The rule groups Prometheus loaded, with their rules' health and last error."""
        return self.api("/api/v1/rules")["groups"]

    def log_tail(self, chars: int = 3000) -> str:
        return self.process.log_tail(chars)


def _config(jobs: Mapping[str, str], rules: Path) -> dict[str, Any]:
    """Scrape each job's http://host:port/path every second."""
    scrapes = []
    for job, url in jobs.items():
        parsed = urllib.parse.urlsplit(url)
        scrapes.append(
            {
                "job_name": job,
                "metrics_path": parsed.path or "/metrics",
                "static_configs": [{"targets": [parsed.netloc]}],
            }
        )
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": scrapes,
    }


@contextlib.contextmanager
def prometheus(
    metrics_url: str,
    workdir: Path | None = None,
    *,
    rules: Path = RULES,
    timeout: float = START_TIMEOUT,
    also: Mapping[str, str] | None = None,
) -> Iterator[Prometheus]:
    """Prometheus scraping `metrics_url` (http://host:port/metrics, the operator's, as the job
    `metapolicy-operator`) and the `also` jobs (job name -> URL) for the block.

    Listens on a free 127.0.0.1 port with a temporary config and TSDB; waits (bounded) until
    `/-/ready` answers, and stops it with SIGTERM (bounded, then SIGKILL) on exit.
    """
    path = binary(PROMETHEUS)
    if path is None:
        raise FileNotFoundError("prometheus is not installed")
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="metapolicy-prometheus-")) if own_dir else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rules, workdir / "rules.yaml")
    config = _config({JOB: metrics_url, **(also or {})}, workdir / "rules.yaml")
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    argv = [
        path,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
    process = ManagedProcess("prometheus", argv, workdir / "prometheus.log")
    server = Prometheus(f"http://127.0.0.1:{port}", process)
    try:

        def ready() -> bool:
            if not process.running():
                raise E2EFailure(
                    f"prometheus exited with code {process.popen.returncode}:\n{process.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as answer:
                    return answer.status == 200
            except (urllib.error.URLError, OSError):
                return False

        poll(ready, timeout, "prometheus to be ready", interval=0.1, describe=process.log_tail)
        yield server
    finally:
        process.stop(STOP_TIMEOUT)
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def check_metrics(text: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`promtool check metrics` on an exposition text (exit code 0: no problems found)."""
    path = binary(PROMTOOL)
    if path is None:
        raise FileNotFoundError("promtool is not installed")
    return subprocess.run(
        [path, "check", "metrics"], input=text, capture_output=True, text=True, timeout=timeout
    )


def wait_for_result(
    server: Prometheus, expr: str, timeout: float, what: str | None = None
) -> list[dict[str, Any]]:
    """The first non-empty result of `expr`, polled every 0.5 s up to `timeout` seconds."""
    last: list[Any] = []

    def nonempty() -> list[dict[str, Any]]:
        last[:] = [server.query(expr)]
        return last[0]

    started = time.monotonic()
    return poll(nonempty, timeout, what or f"a result of {expr!r}", interval=0.5,
                describe=lambda: f"empty after {time.monotonic() - started:.1f}s")  # fmt: skip
