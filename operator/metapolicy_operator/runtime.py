"""Process-wide shared state of the operator: API clients, the worker pool, metrics, and the
live policy controllers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

import kubernetes

from metapolicy_operator import jobs
from metapolicy_operator.config import OperatorConfig
from metapolicy_operator.metrics import Metrics
from metapolicy_operator.recorder import Recorder


class PolicyLoop(Protocol):
    """What the process-wide handlers need of a MetaPolicy's controller: wake it."""

    wake: asyncio.Event

    def nudge(self) -> None: ...

    def observe(self, body: Mapping) -> None: ...


@dataclass
class Runtime:
    config: OperatorConfig
    api: kubernetes.client.ApiClient
    metrics: Metrics
    pool: ProcessPoolExecutor
    workers: asyncio.Semaphore
    recorder: Recorder = field(default_factory=Recorder)
    controllers: dict[str, PolicyLoop] = field(default_factory=dict)
    node_digests: dict[str, tuple] = field(default_factory=dict)

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.api)

    def __post_init__(self) -> None:
        self.recorder.on_shared_change = self.wake_policies

    def wake_policies(self, keys: set[str]) -> None:
        """Pods shared by these policies changed: let each reconcile and report it."""
        for key in keys:
            if (controller := self.controllers.get(key)) is not None:
                controller.wake.set()

    async def run_job(self, fn: Callable, *args: Any) -> Any:
        """Run in a worker process, at most `workers` at a time across policies."""
        async with self.workers:
            try:
                return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
            except BrokenProcessPool:
                self.pool = jobs.make_pool(self.config.workers)  # a worker died (OOM, kill)
                raise
