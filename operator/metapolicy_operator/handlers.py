"""kopf wiring: a node index, one daemon per MetaPolicy, and the process-wide runtime.

Run with `metapolicy run` or `kopf run -m metapolicy_operator.handlers` (settings from the
environment, see config.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf
import kubernetes

from metapolicy_operator import jobs, recorder
from metapolicy_operator.config import OperatorConfig, api_client
from metapolicy_operator.controller import PolicyController, cleanup_store
from metapolicy_operator.inventory import eligibility, node_profile
from metapolicy_operator.metrics import Metrics, serve
from metapolicy_operator.reporting import GROUP, PLURAL, VERSION
from metapolicy_operator.runtime import Runtime

RUNTIME_KEY = "metapolicy-runtime"
recorder.register(RUNTIME_KEY)  # the workload recorder: pods -> each policy's observed trace


def node_digest(body: kopf.Body) -> tuple:
    """What policies read from a node: eligibility, profile and labels (for selectors)."""
    eligible, reason = eligibility(body)
    profile, issues = node_profile(body)
    labels = tuple(sorted((body.get("metadata", {}).get("labels") or {}).items()))
    return eligible, reason, profile, tuple(i.message for i in issues), labels


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The same cluster for kopf and for our own client: an explicit kubeconfig if given
    (read now, not when the kubernetes library was imported), else in-cluster."""
    config = OperatorConfig.from_env()
    if config.kubeconfig:
        os.environ["KUBECONFIG"] = config.kubeconfig
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_: Any) -> None:
    config = OperatorConfig.from_env()
    # Only explicit Events (kopf.event) reach the MetaPolicy; log lines stay logs.
    settings.posting.level = logging.ERROR
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    runtime = Runtime(
        config=config,
        api=api_client(config.kubeconfig),
        metrics=Metrics(),
        pool=jobs.make_pool(config.workers),
        workers=asyncio.Semaphore(config.workers),
    )
    # The kubernetes client imports an API class (and builds the pydantic models it uses) on
    # first access: about 1 s of CPU for CoreV1Api, which in the first reconcile stalled the
    # event loop (watches, /metrics). Pay it now, before anything is served or watched.
    for api in ("CoreV1Api", "CustomObjectsApi"):
        getattr(kubernetes.client, api)
    server = await serve(
        runtime.metrics, config.metrics_port, lambda: (True, "ok"), config.metrics_host
    )
    port = server.addresses[0][1] if server.addresses else config.metrics_port
    logger.info("metrics on http://%s:%s/metrics", config.metrics_host, port)
    memo[RUNTIME_KEY] = runtime
    memo[recorder.RECORDER_KEY] = runtime.recorder  # one recorder: it also tells shared pods
    memo["metapolicy-server"] = server
    memo["metapolicy-metrics-port"] = port


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get(RUNTIME_KEY)
    server = memo.get("metapolicy-server")
    if server is not None:
        await server.cleanup()
    if runtime is not None:
        runtime.pool.shutdown(wait=False, cancel_futures=True)
        runtime.api.close()


@kopf.index("", "v1", "nodes")
def nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    """Every node by name; each policy filters by its own selector and eligibility."""
    return {name: dict(body)}


@kopf.on.event("", "v1", "nodes")
async def node_changed(
    type: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Async so the nudge happens on the event loop, in order with the index update; and only
    when something a policy reads changed, so routine status updates do not keep resetting the
    settle window on a large cluster."""
    runtime: Runtime | None = memo.get(RUNTIME_KEY)
    if runtime is None:
        return
    runtime.metrics.node_events.labels((type or "LIST").lower()).inc()
    digest = None if type == "DELETED" else node_digest(body)
    if runtime.node_digests.get(name) == digest:
        return
    if digest is None:
        runtime.node_digests.pop(name, None)
    else:
        runtime.node_digests[name] = digest
    for controller in list(runtime.controllers.values()):
        controller.nudge()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def policy_changed(
    body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any
) -> None:
    runtime: Runtime | None = memo.get(RUNTIME_KEY)
    controller = runtime.controllers.get(f"{namespace}/{name}") if runtime else None
    if controller is not None:
        controller.observe(body)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_backoff=5.0, cancellation_timeout=10.0)
async def policy_daemon(
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    nodes: kopf.Index,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """One loop per MetaPolicy; kopf restarts it if it crashes and stops it on deletion."""
    runtime: Runtime = memo[RUNTIME_KEY]
    key = f"{namespace}/{name}"
    controller = PolicyController(runtime, body, nodes)
    controller.observe(body)
    runtime.controllers[key] = controller
    try:
        await controller.run(stopped)
    finally:
        if runtime.controllers.get(key) is controller:
            del runtime.controllers[key]


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def policy_deleted(
    body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any
) -> None:
    runtime: Runtime = memo[RUNTIME_KEY]
    await cleanup_store(runtime, body)
    runtime.metrics.forget(f"{namespace}/{name}")
