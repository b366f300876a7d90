"""The system under test as separate processes, connected only by a kubeconfig.

The Kubernetes API is either the KMock emulator started as a process
(`python -m e2e.embedded`), or, when `E2E_KUBECONFIG` is set, the real cluster
that kubeconfig points at (the CRD is applied with the kubernetes client). Either way the
operator is `metapolicy run --kubeconfig ...` in its own process group, so the e2e run
exercises exactly what a deployment runs, and killing it (the crash test) also kills its
worker processes, as when a pod dies.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import yaml

from e2e.wait import E2EFailure, poll

GROUP, VERSION, PLURAL = "metapolicy.dev", "v1alpha1", "metapolicies"  # MetaPolicy objects

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "metapolicy.yaml"
KUBECONFIG_ENV = "E2E_KUBECONFIG"

#: Bounds for process start and stop on a loaded 2-core machine.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

_METRICS_LINE = re.compile(r"metrics on (http://\S+?)/metrics")


class ManagedProcess:
    """A child process in its own process group, logging to a file.

    Own group: a stop or kill reaches the worker processes the operator spawned too, and
    nothing else. Logs go to a file (not a pipe) so a chatty child can never block on a full
    pipe, and a failure message can quote the tail.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_for_log(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first match of `pattern` in the log; fails early if the process exits."""

        def found() -> re.Match[str] | None:
            match = pattern.search(self.log_tail(1_000_000))
            if match is None and not self.running():
                raise E2EFailure(
                    f"{self.name} exited with code {self.popen.returncode} before logging "
                    f"{pattern.pattern!r}:\n{self.log_tail()}"
                )
            return match

        return poll(found, timeout, f"{self.name} to log {pattern.pattern!r}", interval=0.1,
                    describe=self.log_tail)  # fmt: skip

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and a bounded wait; SIGKILL for the group if that is not enough."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._reap_group()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL for the whole group at once: a crash, with no chance to clean up."""
        self._signal_group(signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._reap_group()

    def _signal_group(self, signum: int) -> bool:
        try:
            os.killpg(self.popen.pid, signum)  # the group id is the leader's pid
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _reap_group(self) -> None:
        """Workers left behind by the leader get SIGTERM, then SIGKILL after a short wait."""
        if not self._signal_group(signal.SIGTERM):
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._signal_group(0):
            time.sleep(0.1)
        self._signal_group(signal.SIGKILL)


@dataclass
class Kube:
    """Clients for one cluster, built from its kubeconfig (as the operator builds its own)."""

    kubeconfig: Path
    real: bool  # a real API server (admission, validation, node controllers) or the emulator
    api: kubernetes.client.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.api)

    def policy_status(self, name: str, namespace: str = "default") -> dict:
        """A MetaPolicy's status ({} before the operator wrote one)."""
        body = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return body.get("status") or {}

    def wait_ready(self, name: str, nodes: int, timeout: float) -> dict:
        """Poll until the policy is Ready with `nodes` nodes; its status then."""

        def converged() -> dict | None:
            s = self.policy_status(name)
            return s if s.get("phase") == "Ready" and s.get("currentNodes") == nodes else None

        return poll(converged, timeout, f"{name} Ready with {nodes} nodes",
                    describe=lambda: str(self.policy_status(name)))  # fmt: skip

    @property
    def coordination(self) -> kubernetes.client.CoordinationV1Api:
        return kubernetes.client.CoordinationV1Api(self.api)

    def close(self) -> None:
        self.api.close()


class Operator:
    """`metapolicy run` as a process; start it again after a stop or a kill."""

    def __init__(self, kubeconfig: Path, workdir: Path, workers: int = 1) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.workers = workers
        self.process: ManagedProcess | None = None
        self.metrics_url: str | None = None
        self.starts = 0

    def start(self, timeout: float = START_TIMEOUT, env: dict[str, str] | None = None) -> None:
        """Start and wait until it serves /metrics (its startup handler has run). `env` adds
        environment variables (the crash tests set a fault point)."""
        if self.process is not None and self.process.running():
            raise RuntimeError("the operator is already running")
        self.starts += 1
        argv = [
            sys.executable, "-m", "metapolicy_operator.cli", "run",
            "--kubeconfig", str(self.kubeconfig),
            "--metrics-host", "127.0.0.1", "--metrics-port", "0",
            "--workers", str(self.workers),
        ]  # fmt: skip
        log = self.workdir / f"operator-{self.starts}.log"
        # A failed reconcile is retried after 30 s by default; e2e has no time for that.
        env = {"METAPOLICY_RETRY_SECONDS": "5"} | (env or {})
        self.process = ManagedProcess("operator", argv, log, env)
        match = self.process.wait_for_log(_METRICS_LINE, timeout)
        self.metrics_url = f"{match[1]}/metrics"

    def stop(self) -> int | None:
        return self.process.stop() if self.process is not None else None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def log_tail(self, chars: int = 3000) -> str:
        return self.process.log_tail(chars) if self.process is not None else ""


@dataclass
class Environment:
    kube: Kube
    operator: Operator
    workdir: Path
    emulator: ManagedProcess | None  # None on a real cluster


def start_emulator(workdir: Path, timeout: float = START_TIMEOUT) -> tuple[ManagedProcess, Path]:
    kubeconfig = workdir / "kubeconfig"
    argv = [
        sys.executable, "-m", "e2e.embedded",
        "--port", "0", "--kubeconfig", str(kubeconfig), "--crd", str(CRD),
    ]  # fmt: skip
    process = ManagedProcess("emulator", argv, workdir / "emulator.log")
    try:
        process.wait_for_log(re.compile(r"^READY (\S+)", re.M), timeout)
    except BaseException:
        process.stop()
        raise
    return process, kubeconfig


def apply_crd(kube: Kube, path: Path = CRD, timeout: float = START_TIMEOUT) -> None:
    """Create or update the CRD on a real cluster and wait until it is Established."""
    body = yaml.safe_load(path.read_text())
    ext = kubernetes.client.ApiextensionsV1Api(kube.api)
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except kubernetes.client.ApiException as error:
        if error.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, body)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(name)
        conditions = (crd.status.conditions or []) if crd.status else []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    poll(established, timeout, f"CRD {name} to be Established")


def real_kubeconfig() -> str | None:
    """The kubeconfig of a real cluster to run e2e against (`$E2E_KUBECONFIG`), if any."""
    return os.environ.get(KUBECONFIG_ENV) or None


@contextlib.contextmanager
def environment(
    workdir: Path | None = None, *, workers: int = 1, kubeconfig: str | None = None
) -> Iterator[Environment]:
    """API server + operator for the duration of the block, stopped (bounded) on exit.

    `kubeconfig` selects a real cluster (see `real_kubeconfig()`); without it the emulator is
    started. A temporary `workdir` (kubeconfig, logs) is removed afterwards unless the block
    failed, so the logs of a failure survive for inspection.
    """
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="metapolicy-e2e-")) if own_dir else workdir
    emulator: ManagedProcess | None = None
    kube: Kube | None = None
    operator: Operator | None = None
    failed = True
    try:
        if kubeconfig:
            kube = Kube(Path(kubeconfig), real=True)
            apply_crd(kube)
        else:
            emulator, path = start_emulator(workdir)
            kube = Kube(path, real=False)
        operator = Operator(kube.kubeconfig, workdir, workers)
        operator.start()
        yield Environment(kube, operator, workdir, emulator)
        failed = False
    finally:
        if operator is not None:
            operator.stop()
        if kube is not None:
            kube.close()
        if emulator is not None:
            emulator.stop()
        if own_dir and not failed:
            shutil.rmtree(workdir, ignore_errors=True)
        elif own_dir:
            print(f"e2e logs kept in {workdir}", file=sys.stderr)
