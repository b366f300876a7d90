"""`metapolicy serve`: the placement server as a process (or N processes sharing the port),
and `metapolicy run --serve`, the same server on a thread of the operator's process.

The server is its own process so that scheduling goes on while the operator restarts or
adapts, and so that it can run as several replicas: it only reads the cluster and the store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import kubernetes
import torch
from aiohttp import web

from metapolicy_operator.config import add_cluster_arguments, api_client
from metapolicy_operator.configmap_store import KIND_POINTER, LABEL_KIND
from metapolicy_operator.serving.cache import ClusterCache, node_info, pod_info
from metapolicy_operator.serving.informer import Informer
from metapolicy_operator.serving.metrics import MULTIPROC_ENV, ServeMetrics
from metapolicy_operator.serving.placer import Placer
from metapolicy_operator.serving.policies import PolicyRegistry, pointer_info
from metapolicy_operator.serving.server import PlacementServer
from metapolicy_operator.serving.shadow import ShadowLog

log = logging.getLogger("metapolicy_operator.serving")

GROUP, VERSION, PLURAL = "metapolicy.dev", "v1alpha1", "metapolicies"
YOUNG_S = 60.0  # a worker that exits sooner than this after its start "dies young"
CRASH_LIMIT = 5  # young deaths in a row before the server gives up


@dataclass(frozen=True)
class ServeOptions:
    kubeconfig: str | None = None  # None: in-cluster, then $KUBECONFIG / ~/.kube/config
    namespaces: tuple[str, ...] = ()  # MetaPolicies watched; () = all namespaces
    host: str = "0.0.0.0"
    port: int = 8090  # 0 picks a free port (tests)
    metrics_port: int | None = 8091  # None: only on the main port
    budget_s: float = 0.030
    reuse_port: bool = False  # several worker processes share the ports
    watch_seconds: int = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cluster_arguments(parser, "serve")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8090, help="extender verbs, probes, metrics")
    parser.add_argument(
        "--metrics-port", type=int, default=8091, help="/metrics, /healthz and /readyz also here"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes sharing the ports (SO_REUSEPORT)"
    )
    parser.add_argument(
        "--budget-ms",
        type=float,
        default=30.0,
        help="per-request latency budget: past it, heuristic scores",
    )
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--verbose", action="store_true")


def options_from(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(
        kubeconfig=args.kubeconfig,
        namespaces=tuple(args.namespace or ()),
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port if args.metrics_port != args.port else None,
        budget_s=args.budget_ms / 1000,
        reuse_port=args.workers > 1,
    )


# ----- one server process ---------------------------------------------------------------------
class ServingRuntime:
    """Everything one server process runs: cache, informers, policies, HTTP sites."""

    def __init__(self, options: ServeOptions, api: kubernetes.client.ApiClient | None = None):
        self.options = options
        self.api = api
        self.metrics = ServeMetrics()
        self.cache = ClusterCache()
        self.shadow = ShadowLog(self.metrics)
        self.cache.pod_bound.append(self.shadow.bound)
        self.informers: list[Informer] = []
        self.runners: list[web.AppRunner] = []
        self.ports: list[int] = []
        self._tasks: list[asyncio.Task] = []

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def metrics_port(self) -> int | None:
        return self.ports[1] if len(self.ports) > 1 else None

    def ready(self) -> tuple[bool, str]:
        waiting = [i.name for i in self.informers if not i.synced]
        if waiting:
            return False, f"waiting for the first list of {', '.join(waiting)}"
        return True, "ready"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.api is None:
            self.api = await asyncio.to_thread(api_client, self.options.kubeconfig)
        core = kubernetes.client.CoreV1Api(self.api)
        custom = kubernetes.client.CustomObjectsApi(self.api)
        self.registry = PolicyRegistry(self.cache, self.metrics, core)
        self.compute = ThreadPoolExecutor(1, thread_name_prefix="policy-compute")
        self.placer = Placer(
            self.cache, self.registry, self.shadow, self.metrics, self.compute,
            budget_s=self.options.budget_s,
        )  # fmt: skip
        self.server = PlacementServer(self.placer, self.metrics, self.ready)
        watch = self.options.watch_seconds

        def informer(name, call, prepare, on_list, on_event) -> None:
            self.informers.append(Informer(name, call, loop, prepare, on_list, on_event, watch))

        cache = self.cache
        informer("nodes", core.list_node, node_info, cache.replace_nodes, cache.apply_node)
        informer(
            "pods", core.list_pod_for_all_namespaces, pod_info, cache.replace_pods, cache.apply_pod
        )
        pointer_selector = f"{LABEL_KIND}={KIND_POINTER}"
        registry = self.registry
        for namespace in self.options.namespaces or (None,):
            where = namespace or "all namespaces"
            if namespace is None:
                policies = functools.partial(
                    custom.list_cluster_custom_object, GROUP, VERSION, PLURAL
                )
                pointers = functools.partial(
                    core.list_config_map_for_all_namespaces, label_selector=pointer_selector
                )
            else:
                policies = functools.partial(
                    custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL
                )
                pointers = functools.partial(
                    core.list_namespaced_config_map, namespace, label_selector=pointer_selector
                )
            informer(
                f"metapolicies ({where})", policies, _same,
                functools.partial(registry.replace_policies, scope=namespace),
                registry.apply_policy,
            )  # fmt: skip
            informer(
                f"active pointers ({where})", pointers, pointer_info,
                functools.partial(registry.replace_pointers, scope=namespace),
                registry.apply_pointer,
            )  # fmt: skip
        for i in self.informers:
            i.start()
        self.registry.start()
        self._tasks.append(loop.create_task(self._refresh_gauges()))
        await self._listen(self.server.app(), self.options.port)
        if self.options.metrics_port is not None:
            await self._listen(self.server.probes_app(), self.options.metrics_port)

    async def _listen(self, app: web.Application, port: int) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.options.host, port, reuse_port=self.options.reuse_port)
        await site.start()
        self.runners.append(runner)
        self.ports.append(runner.addresses[0][1] if runner.addresses else port)

    async def _refresh_gauges(self) -> None:
        while True:
            self.metrics.cache_objects.labels("nodes").set(len(self.cache.nodes))
            self.metrics.cache_objects.labels("pods").set(len(self.cache.pods))
            if self.informers:
                oldest = min(i.last_contact for i in self.informers)
                self.metrics.sync_age.set(time.monotonic() - oldest)
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if hasattr(self, "registry"):
            await self.registry.close()
        await asyncio.gather(*(asyncio.to_thread(i.stop) for i in self.informers))
        if hasattr(self, "compute"):
            self.compute.shutdown(wait=False, cancel_futures=True)
        if self.api is not None:
            self.api.close()


def _same(obj: dict) -> dict:
    return obj


async def serve_until(options: ServeOptions, stop: asyncio.Event) -> None:
    runtime = ServingRuntime(options)
    await runtime.start()
    log.info(
        "placement server on %s:%d (metrics port %s), MetaPolicies in %s, budget %.0f ms",
        options.host, runtime.port, runtime.metrics_port,
        ", ".join(options.namespaces) or "all namespaces", options.budget_s * 1000,
    )  # fmt: skip
    try:
        await stop.wait()
    finally:
        await runtime.stop()


async def _serve_forever(options: ServeOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve_until(options, stop)


# ----- logging ------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str = "text", verbose: bool = False) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("metapolicy_operator").setLevel(logging.DEBUG if verbose else logging.INFO)


# ----- worker processes ---------------------------------------------------------------------
def _worker(options: ServeOptions, log_format: str, verbose: bool) -> None:
    configure_logging(log_format, verbose)
    torch.set_num_threads(1)
    asyncio.run(_serve_forever(options))


def _run_workers(options: ServeOptions, workers: int, log_format: str, verbose: bool) -> int:
    """N processes on the same ports (SO_REUSEPORT: the kernel spreads connections), each with
    its own cache and policies; metrics summed across them through files in a shared
    directory. A worker that dies is started again, after a growing pause if it keeps dying
    young; if one dies young `CRASH_LIMIT` times in a row (a bad kubeconfig, a taken port),
    the whole server exits with an error."""
    from prometheus_client import multiprocess

    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.TemporaryDirectory(prefix="metapolicy-serve-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir.name
    context = multiprocessing.get_context("spawn")
    options = replace(options, reuse_port=True)

    def spawn() -> tuple[Any, float]:
        process = context.Process(
            target=_worker, args=(options, log_format, verbose), name="metapolicy-serve"
        )
        process.start()
        return process, time.monotonic()

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    slots = [spawn() for _ in range(workers)]
    crashes = [0] * workers
    code = 0
    try:
        while not stopping.is_set():
            multiprocessing.connection.wait([p.sentinel for p, _ in slots], timeout=0.5)
            for i, (process, started) in enumerate(slots):
                if process.is_alive() or stopping.is_set():
                    continue
                multiprocess.mark_process_dead(process.pid)
                young = time.monotonic() - started < YOUNG_S
                crashes[i] = crashes[i] + 1 if young else 0
                if crashes[i] >= CRASH_LIMIT:
                    log.error("worker %d keeps exiting (%s); stopping", process.pid,
                              process.exitcode)  # fmt: skip
                    stopping.set()
                    code = 1
                    break
                pause = min(2.0 ** crashes[i] - 1, 30.0)
                log.warning("worker %d exited (%s); starting it again in %.0fs", process.pid,
                            process.exitcode, pause)  # fmt: skip
                if stopping.wait(pause):
                    break
                slots[i] = spawn()
    finally:
        for process, _ in slots:
            process.terminate()
        for process, _ in slots:
            process.join(10)
        if own_dir is not None:
            own_dir.cleanup()
    return code


def run(args: argparse.Namespace) -> int:
    """`metapolicy serve`."""
    configure_logging(args.log_format, args.verbose)
    options = options_from(args)
    if args.workers > 1:
        return _run_workers(options, args.workers, args.log_format, args.verbose)
    torch.set_num_threads(1)
    asyncio.run(_serve_forever(options))
    return 0


# ----- inside the operator's process ----------------------------------------------------------
class ServerThread:
    """`metapolicy run --serve`: the server on its own thread and event loop, next to kopf's."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metapolicy-serve", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        self._started.wait(10)
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._started.set()
            await serve_until(self.options, self._stop)

        try:
            asyncio.run(main())
        except Exception:
            log.exception("the placement server stopped")
        finally:
            self._started.set()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


def start_in_thread(
    kubeconfig: str | None, namespaces: Sequence[str], port: int, host: str = "0.0.0.0"
) -> ServerThread:
    """For `metapolicy run --serve`: probes and metrics on the main port only."""
    options = ServeOptions(
        kubeconfig=kubeconfig, namespaces=tuple(namespaces), host=host, port=port,
        metrics_port=None,
    )  # fmt: skip
    return ServerThread(options).start()
