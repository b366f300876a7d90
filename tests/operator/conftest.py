"""
Fixtures for operator tests against the embedded Kubernetes API (the KMock emulator).

* ``cluster`` — a fresh emulated API per test, serving the project CRD;
* ``api`` — a small JSON client for that API (what kopf sees is what the test sees);
* ``run_operator`` — runs kopf handlers in-process, as a task of the test's event loop;
* ``wait_for`` — polls a predicate until it holds; a timeout fails the test.

Nothing here sleeps for a fixed time: every wait is a poll of a condition with a bound.
See ``docs/dev/kmock.md`` for what the emulator does and does not do.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import inspect
import json
import socket
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kopf
import pytest

from e2e.embedded import EmbeddedCluster, embedded_cluster

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_CRD = REPO_ROOT / "crds" / "metapolicy.yaml"

#: Upper bound of every wait in these tests: long enough for a loaded CI runner,
#: short enough that a hang fails the test instead of the whole job.
TIMEOUT = 10.0


def crd_path() -> Path:
    return PROJECT_CRD


@pytest.fixture
def crd_file() -> Path:
    return crd_path()


@pytest.fixture
async def cluster() -> AsyncIterator[EmbeddedCluster]:
    async with embedded_cluster([crd_path()], timeout=TIMEOUT) as cluster:
        yield cluster


async def wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = TIMEOUT,
    *,
    interval: float = 0.02,
    message: str = "",
) -> T:
    """
    Poll ``predicate`` (sync or async) until it returns a truthy value, and return that value.

    The whole wait, including a predicate call that hangs, is bounded by ``timeout``;
    on expiry it fails the test with ``message`` and the last value seen.
    """
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                last = await result if inspect.isawaitable(result) else result
                if last:
                    return last
                await asyncio.sleep(interval)
    except TimeoutError:
        what = message or getattr(predicate, "__qualname__", repr(predicate))
        raise AssertionError(f"Not true within {timeout}s: {what}; last value: {last!r}") from None


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Awaitable[Any]]:
    return wait_for


class ApiError(Exception):
    """An HTTP error from the API, with the Kubernetes ``Status`` body it returned."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(
            f"HTTP {status}: {body.get('message') if isinstance(body, dict) else body}"
        )
        self.status = status
        self.body = body


class Api:
    """A minimal JSON client for the emulated API: paths in, parsed bodies out."""

    Error = ApiError

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def request(
        self, method: str, path: str, *, body: Any = None, content_type: str | None = None
    ) -> Any:
        headers = {"Content-Type": content_type} if content_type else None
        async with self.session.request(method, path, json=body, headers=headers) as response:
            data = await response.json(content_type=None)
            if response.status >= 400:
                raise ApiError(response.status, data)
            return data

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def find(self, path: str) -> Any | None:
        """The object, or ``None`` if it does not exist (for polling)."""
        try:
            return await self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def create(self, path: str, body: dict[str, Any]) -> Any:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, patch: dict[str, Any]) -> Any:
        return await self.request(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)

    async def watch(self, path: str, *, timeout_seconds: float) -> AsyncIterator[dict[str, Any]]:
        """Yield watch events until the server ends the stream after ``timeout_seconds``."""
        params = {"watch": "true", "timeoutSeconds": str(timeout_seconds)}
        timeout = aiohttp.ClientTimeout(total=timeout_seconds + TIMEOUT)
        async with self.session.get(path, params=params, timeout=timeout) as response:
            if response.status >= 400:
                raise ApiError(response.status, await response.json(content_type=None))
            if response.content_type != "application/json":  # as strict as client-go
                raise ApiError(response.status, f"watch served as {response.content_type}")
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


@pytest.fixture
async def api(cluster: EmbeddedCluster) -> AsyncIterator[Api]:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(cluster.url, timeout=timeout) as session:
        yield Api(session)


# The login handler is registered once per registry and reads the URL of the current
# run from a context variable: a registry reused across tests never points kopf at the
# cluster of a previous test, and the caller's registry gets no per-run handlers.
_cluster_url: contextvars.ContextVar[str] = contextvars.ContextVar("embedded_cluster_url")
_registries_with_login: weakref.WeakSet[kopf.OperatorRegistry] = weakref.WeakSet()


async def _login_to_embedded_cluster(**_: Any) -> kopf.ConnectionInfo:
    # Above any other login handler the operator module may declare.
    return kopf.ConnectionInfo(server=_cluster_url.get(), priority=1_000_000)


def load_operator_modules(modules: Iterable[str]) -> kopf.OperatorRegistry:
    """
    Import operator modules into a fresh registry instead of kopf's process-wide one.

    Modules that are already imported are re-imported, so that their ``@kopf.on...``
    decorators run again and land in the new registry.
    """
    registry = kopf.OperatorRegistry()
    previous = kopf.get_default_registry()
    kopf.set_default_registry(registry)
    try:
        for name in modules:
            if name in sys.modules:
                importlib.reload(sys.modules[name])
            else:
                importlib.import_module(name)
    finally:
        kopf.set_default_registry(previous)
    return registry


def operator_settings() -> kopf.OperatorSettings:
    """Kopf's defaults, with every network wait bounded so that a hang fails fast."""
    settings = kopf.OperatorSettings()
    settings.networking.request_timeout = TIMEOUT
    settings.networking.connect_timeout = TIMEOUT / 2
    settings.watching.connect_timeout = TIMEOUT / 2
    return settings


@contextlib.asynccontextmanager
async def running_operator(
    cluster: EmbeddedCluster,
    *,
    registry: kopf.OperatorRegistry | None = None,
    modules: Sequence[str] = (),
    settings: kopf.OperatorSettings | None = None,
    namespaces: Sequence[str] = (),
    timeout: float = TIMEOUT,
) -> AsyncIterator[asyncio.Task[None]]:
    """
    Run kopf in-process (``kopf.operator()`` as a task) against the embedded cluster.

    Handlers come either from ``registry`` or from importing ``modules``. The operator
    is standalone (the emulator has no peering resources) and cluster-wide unless
    ``namespaces`` are given. Exiting stops it; its own crash is re-raised then.
    """
    if (registry is None) == (not modules):
        raise TypeError("Pass either a registry or operator modules.")
    registry = registry if registry is not None else load_operator_modules(modules)
    if registry not in _registries_with_login:
        kopf.on.login(registry=registry, id="embedded-cluster")(_login_to_embedded_cluster)
        _registries_with_login.add(registry)

    stop = asyncio.Event()
    ready = asyncio.Event()
    token = _cluster_url.set(cluster.url)  # the task copies the context when created
    try:
        task = asyncio.create_task(
            kopf.operator(
                registry=registry,
                settings=settings if settings is not None else operator_settings(),
                standalone=True,
                clusterwide=not namespaces,
                namespaces=namespaces,
                stop_flag=stop,
                ready_flag=ready,
            ),
            name="kopf-operator",
        )
    finally:
        _cluster_url.reset(token)

    try:
        started = asyncio.ensure_future(ready.wait())
        await asyncio.wait({started, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if task.done():
            task.result()  # re-raise its startup error
            raise RuntimeError("The operator exited during its startup.")
        if not ready.is_set():
            raise TimeoutError(f"The operator did not start within {timeout}s.")
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout)


@pytest.fixture
def run_operator(cluster: EmbeddedCluster) -> Callable[..., Any]:
    """``async with run_operator(registry=...) as task:`` — see :func:`running_operator`."""

    def run(**kwargs: Any) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
        return running_operator(cluster, **kwargs)

    return run


# ----- the operator under test: its settings and its metrics port ------------------------------
@pytest.fixture
def metrics_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def operator_env(cluster, monkeypatch, metrics_port):
    """`metapolicy run`'s settings, as environment variables, for an in-process operator."""
    monkeypatch.setenv("METAPOLICY_KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("METAPOLICY_METRICS_HOST", "127.0.0.1")
    monkeypatch.setenv("METAPOLICY_METRICS_PORT", str(metrics_port))
    monkeypatch.setenv("METAPOLICY_WORKERS", "1")
    monkeypatch.setenv("METAPOLICY_RETRY_SECONDS", "1")
