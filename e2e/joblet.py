"""Plays the kubelet and the Job controller for the operator's training Jobs.

There is no kubelet in the embedded cluster, so a `Joblet` runs each training Job's container
command as a local process (the image is not pulled: the command is this project's own
`metapolicy job run`, given the cluster's kubeconfig) and writes the Job's status as the Job
controller would: `startTime` and `active`, then a `Complete` or `Failed` condition, a `Failed`
one with reason `DeadlineExceeded` past `activeDeadlineSeconds`. A Job deleted meanwhile has its
process killed. `fail_next` makes the next Jobs fail at once, like a pod that cannot start.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import kubernetes

from e2e.cluster import ROOT, Kube

SELECTOR = "app.kubernetes.io/managed-by=metapolicy-operator"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Run:
    namespace: str
    name: str
    process: subprocess.Popen | None
    deadline: float


@dataclass
class Joblet:
    kube: Kube
    workdir: Path
    interval: float = 0.5
    fail_next: int = 0
    seen: list[str] = field(default_factory=list)  # every Job name, in order
    results: dict[str, str] = field(default_factory=dict)  # name -> Complete | Failed reason
    _runs: dict[tuple[str, str], _Run] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def batch(self) -> kubernetes.client.BatchV1Api:
        return kubernetes.client.BatchV1Api(self.kube.api)

    def __enter__(self) -> Joblet:
        self._thread = threading.Thread(target=self._loop, name="joblet", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for run in self._runs.values():
            if run.process is not None and run.process.poll() is None:
                run.process.kill()
                run.process.wait(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(kubernetes.client.ApiException, OSError):
                self._tick()

    def _tick(self) -> None:
        jobs = self.batch.list_job_for_all_namespaces(label_selector=SELECTOR).items
        present = {(j.metadata.namespace, j.metadata.name): j for j in jobs}
        for key, job in present.items():
            if key not in self._runs and not (job.status and job.status.conditions):
                self._start(job)
        for key, run in list(self._runs.items()):
            if key not in present:  # deleted: its pod goes with it
                if run.process is not None and run.process.poll() is None:
                    run.process.kill()
                del self._runs[key]
            elif run.process is not None:
                self._follow(run)

    def _start(self, job) -> None:
        namespace, name = job.metadata.namespace, job.metadata.name
        self.seen.append(name)
        deadline = time.monotonic() + (job.spec.active_deadline_seconds or 3600)
        if self.fail_next > 0:
            self.fail_next -= 1
            self._runs[namespace, name] = _Run(namespace, name, None, deadline)
            self._finish(namespace, name, "Failed", "PodFailed", "the pod could not start")
            return
        command = job.spec.template.spec.containers[0].command
        argv = [sys.executable, "-m", "metapolicy_operator.cli", *command[1:]]
        argv += ["--kubeconfig", str(self.kube.kubeconfig)]
        log = (self.workdir / f"job-{name}.log").open("wb")
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
        )
        self._runs[namespace, name] = _Run(namespace, name, process, deadline)
        status = {"startTime": _now(), "active": 1}
        self.batch.patch_namespaced_job_status(name, namespace, {"status": status})

    def _follow(self, run: _Run) -> None:
        code = run.process.poll()
        if code is None and time.monotonic() > run.deadline:
            run.process.kill()
            run.process.wait(timeout=10)
            self._finish(run.namespace, run.name, "Failed", "DeadlineExceeded", "deadline")
        elif code == 0:
            self._finish(run.namespace, run.name, "Complete", "", "")
        elif code is not None:
            self._finish(run.namespace, run.name, "Failed", "BackoffLimitExceeded", f"exit {code}")
        else:
            return
        run.process = None

    def _finish(self, namespace: str, name: str, kind: str, reason: str, message: str) -> None:
        self.results[name] = kind if kind == "Complete" else f"Failed {reason}"
        condition = {"type": kind, "status": "True", "lastTransitionTime": _now()}
        if reason:
            condition |= {"reason": reason, "message": message}
        counts = {"succeeded": 1} if kind == "Complete" else {"failed": 1}
        status = {"conditions": [condition], "active": 0, "completionTime": _now(), **counts}
        self.batch.patch_namespaced_job_status(name, namespace, {"status": status})
