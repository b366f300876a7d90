"""The one thing a kubelet does that e2e needs: a pod bound to a node starts running.

The emulator's nodes (and the fake nodes on a real cluster) have no kubelet, so a bound pod
would stay Pending forever. This marks each bound pod of the given scheduler `Running` with
`status.startTime` (what the placement server reads as the pod's age) and Ready conditions,
once, from the same pod informer the scheduler driver uses.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from datetime import UTC, datetime
from typing import Any

import kubernetes

from e2e.cluster import Kube
from e2e.informer import Informer, object_key

MERGE_PATCH = "application/merge-patch+json"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    def __init__(self, kube: Kube, pods: Informer, scheduler_name: str) -> None:
        self.kube = kube
        self.scheduler_name = scheduler_name
        self.started: set[str] = set()
        self.errors: list[str] = []
        self._todo: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)
        pods.add_handler(self._pod_event)

    def start(self) -> Kubelet:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._todo.put(None)
        self._thread.join(timeout)

    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        if kind == "DELETED" or spec.get("schedulerName") != self.scheduler_name:
            return
        if not spec.get("nodeName") or status.get("phase") not in (None, "Pending"):
            return
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            return
        if object_key(pod) not in self.started:
            self.started.add(object_key(pod))
            self._todo.put(pod)

    def _run(self) -> None:
        while (pod := self._todo.get()) is not None:
            meta, now = pod["metadata"], _now()
            ready = [
                {"type": kind, "status": "True", "lastTransitionTime": now}
                for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ]
            patch = {"status": {"phase": "Running", "startTime": now, "conditions": ready}}
            try:
                self.kube.core.patch_namespaced_pod_status(
                    meta["name"], meta["namespace"], patch, _content_type=MERGE_PATCH
                )
            except kubernetes.client.ApiException as error:
                if error.status != 404:  # deleted meanwhile: nothing to run
                    self.errors.append(f"{object_key(pod)}: {error.status} {error.reason}")
            except Exception as error:  # recorded; tests assert there are none
                with contextlib.suppress(Exception):
                    self.errors.append(f"{object_key(pod)}: {error}")
