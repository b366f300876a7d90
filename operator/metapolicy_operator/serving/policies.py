"""The MetaPolicies the server places pods for, and the version each one serves.

A policy serves exactly the version its store's active pointer names, the one the operator
promoted: the ConfigMap `{policy}-active` (watched, so a promotion arrives within milliseconds)
or the `ACTIVE` file of a filesystem store (polled every `poll_seconds`). A version is loaded
and verified (length and sha256, `decode_checkpoint`) on a loader thread, off the event loop,
and swapped in with one assignment once ready: a request takes the `ActiveVersion` object once
and uses it from start to end, so it never mixes two versions. A candidate the operator rolled
back is stored but never named by the pointer, so it is never loaded. If the named version
cannot be loaded, the policy serves nothing (heuristic scores) and the load is retried with a
backoff; it never falls back to another version on its own.

The server only reads the store: with the operator down it keeps serving the last promoted
version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapolicy.checkpoint import policy_from_checkpoint, stored_record
from metapolicy.policy import SlotPolicy
from metapolicy.store import CheckpointStore, CorruptCheckpointError, FilesystemStore
from metapolicy_operator.configmap_store import (
    KIND_POINTER,
    LABEL_KIND,
    LABEL_POLICY,
    POINTER_KEY,
    ConfigMapStore,
)
from metapolicy_operator.inventory import SelectorError
from metapolicy_operator.pods import policy_matches
from metapolicy_operator.serving.arrivals import ArrivalLog
from metapolicy_operator.serving.cache import ClusterCache, PodInfo
from metapolicy_operator.serving.metrics import ServeMetrics
from metapolicy_operator.spec import InvalidSpec, PolicySpec, parse_spec

log = logging.getLogger(__name__)

RETRY_SECONDS = (1.0, 30.0)  # first and longest wait before loading a failed version again


@dataclass(frozen=True)
class PolicyConfig:
    """What the server reads from a MetaPolicy object."""

    namespace: str
    name: str
    spec: PolicySpec

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def namespaces(self) -> tuple[str, ...]:
        return self.spec.namespaces if self.spec.namespaces is not None else (self.namespace,)

    @property
    def mode(self) -> str:
        return self.spec.serving_mode

    def places(self, pod: Mapping[str, Any]) -> bool:
        try:
            return policy_matches(pod, self.spec.pod_selector, self.namespaces)
        except SelectorError:
            return False

    def places_info(self, pod: PodInfo) -> bool:
        return self.places({"metadata": {"namespace": pod.namespace, "labels": pod.labels}})


@dataclass(frozen=True)
class ActiveVersion:
    """A loaded, verified version: one request uses one of these from start to end."""

    version: int
    policy: SlotPolicy
    node_names: tuple[str, ...]

    @property
    def architecture(self) -> str:
        return self.policy.architecture


@dataclass
class ServedPolicy:
    config: PolicyConfig
    store: CheckpointStore | None = None
    pointer: int | None = None  # the version the active pointer names
    active: ActiveVersion | None = None
    problem: str | None = None  # a fallback reason while `active` is None
    arrivals: ArrivalLog = field(default_factory=ArrivalLog)
    loading: int | None = None  # the version being loaded
    failures: int = 0

    @property
    def key(self) -> str:
        return self.config.key

    def serving(self) -> tuple[ActiveVersion | None, str | None]:
        """(the version to use, or None and the fallback reason). Until a newly promoted
        version is loaded, the previous one keeps serving."""
        if self.active is not None:
            return self.active, None
        return None, self.problem or "no_active_version"


def load_version(store: CheckpointStore, version: int) -> ActiveVersion:
    """Read, verify and rebuild one version (blocking: run it on the loader thread)."""
    checkpoint = store.load(version)  # checks length and sha256 before parsing
    if stored_record(checkpoint.meta) is None:  # a version the operator did not write whole
        raise CorruptCheckpointError("its adaptation record is missing", version=version)
    policy = policy_from_checkpoint(checkpoint).eval()
    for parameter in policy.parameters():
        parameter.requires_grad_(False)
    return ActiveVersion(version=version, policy=policy, node_names=tuple(policy.slot_names))


def config_of(obj: Mapping[str, Any]) -> PolicyConfig:
    """Raises InvalidSpec if the spec cannot be used."""
    meta = obj.get("metadata") or {}
    return PolicyConfig(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        spec=parse_spec(obj.get("spec")),
    )


@dataclass(frozen=True)
class PointerInfo:
    """An active-pointer ConfigMap, as read by `pointer_info` on the informer's thread."""

    namespace: str
    name: str
    policy_label: str | None
    is_pointer: bool
    version: int | None


def pointer_info(obj: Mapping[str, Any]) -> PointerInfo:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        version = int((obj.get("data") or {}).get(POINTER_KEY, ""))
    except ValueError:
        version = None
    return PointerInfo(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        policy_label=labels.get(LABEL_POLICY),
        is_pointer=labels.get(LABEL_KIND) == KIND_POINTER,
        version=version,
    )


StoreFactory = Callable[[PolicyConfig], CheckpointStore]


class PolicyRegistry:
    """Every MetaPolicy in the watched namespaces; lives on the event loop."""

    def __init__(
        self,
        cache: ClusterCache,
        metrics: ServeMetrics,
        core: Any = None,
        poll_seconds: float = 0.25,
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        self.core = core  # CoreV1Api for ConfigMap stores
        self.poll_seconds = poll_seconds
        self.policies: dict[str, ServedPolicy] = {}
        self.pointers: dict[tuple[str, str], PointerInfo] = {}
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-loader")
        self._tasks: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        cache.pod_seen.append(self.record_arrival)

    # ----- MetaPolicy events ----------------------------------------------------------------
    def apply_policy(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"
        if kind == "DELETED":
            self._forget(key)
            return
        try:
            config = config_of(obj)
        except InvalidSpec as error:
            served = self.policies.get(key)
            keeps = "the last valid spec keeps serving" if served else "it places no pod"
            log.warning("MetaPolicy %s: invalid spec (%s); %s", key, error, keeps)
            return
        served = self.policies.get(key)
        if served is None:
            served = self.policies[key] = ServedPolicy(config=config)
            self.metrics.start(key)
            self._rebuild_arrivals(served)
            self._attach_store(served)
            return
        previous, served.config = served.config, config
        if (previous.spec.pod_selector, previous.namespaces) != (
            config.spec.pod_selector,
            config.namespaces,
        ):
            self._rebuild_arrivals(served)
        if (previous.spec.storage_backend, previous.spec.storage_path) != (
            config.spec.storage_backend,
            config.spec.storage_path,
        ):
            self._attach_store(served)

    def replace_policies(self, objs: list[Mapping[str, Any]], scope: str | None = None) -> None:
        """A fresh list of the MetaPolicies in namespace `scope` (None: all namespaces)."""
        listed = set()
        for obj in objs:
            meta = obj.get("metadata") or {}
            listed.add(f"{meta.get('namespace') or ''}/{meta.get('name') or ''}")
            self.apply_policy("ADDED", obj)
        for key, served in list(self.policies.items()):
            if key not in listed and scope in (None, served.config.namespace):
                self._forget(key)

    def _forget(self, key: str) -> None:
        if self.policies.pop(key, None) is not None:
            self.metrics.forget(key)

    # ----- active pointers ------------------------------------------------------------------
    def apply_pointer(self, kind: str, pointer: PointerInfo) -> None:
        where = (pointer.namespace, pointer.name)
        if kind == "DELETED":
            self.pointers.pop(where, None)
        else:
            self.pointers[where] = pointer
        for served in list(self.policies.values()):
            if self._pointer_key(served) == where:
                self._point(served, self._pointed_version(served))

    def replace_pointers(self, pointers: list[PointerInfo], scope: str | None = None) -> None:
        """A fresh list of the pointers in namespace `scope` (None: all namespaces)."""
        self.pointers = {
            where: p for where, p in self.pointers.items() if scope not in (None, where[0])
        } | {(p.namespace, p.name): p for p in pointers}
        for served in list(self.policies.values()):
            if isinstance(served.store, ConfigMapStore):
                self._point(served, self._pointed_version(served))

    def _pointer_key(self, served: ServedPolicy) -> tuple[str, str] | None:
        store = served.store
        if isinstance(store, ConfigMapStore):
            return store.namespace, f"{store.prefix}-active"
        return None

    def _pointed_version(self, served: ServedPolicy) -> int | None:
        pointer = self.pointers.get(self._pointer_key(served) or ("", ""))
        store = served.store
        if pointer is None or not isinstance(store, ConfigMapStore):
            return None
        if not pointer.is_pointer or pointer.policy_label != store.policy_label:
            return None  # a ConfigMap of that name that is not this policy's pointer
        return pointer.version

    def _attach_store(self, served: ServedPolicy) -> None:
        spec = served.config.spec
        if spec.storage_backend == "filesystem":
            served.store = None  # built by the poller (a read-only volume may not be there yet)
            self._point(served, None)
            return
        served.store = ConfigMapStore(self.core, served.config.namespace, served.config.name)
        self._point(served, self._pointed_version(served))

    # ----- loading --------------------------------------------------------------------------
    def _point(self, served: ServedPolicy, version: int | None) -> None:
        """The pointer names `version`: load it, unless it is already served or loading."""
        served.pointer = version
        if version is None:
            served.active, served.problem, served.loading = None, "no_active_version", None
            self.metrics.served_version.labels(served.key).set(0)
            return
        if served.active is not None and served.active.version == version:
            return
        if served.loading == version:
            return
        served.loading = version
        self._spawn(self._load(served, version))

    async def _load(self, served: ServedPolicy, version: int) -> None:
        loop = asyncio.get_running_loop()
        store = served.store
        try:
            if store is None:
                raise RuntimeError("no store")
            active = await loop.run_in_executor(self._loader, load_version, store, version)
        except Exception as error:  # any failure: heuristics, retry later
            if not self._still_wanted(served, version):
                return
            served.active, served.problem = None, "checkpoint_unreadable"
            served.failures += 1
            self.metrics.served_version.labels(served.key).set(0)
            delay = min(RETRY_SECONDS[0] * 2 ** (served.failures - 1), RETRY_SECONDS[1])
            log.warning(
                "MetaPolicy %s: cannot load version %d (%s: %s); heuristic scores, retry in %.0fs",
                served.key, version, type(error).__name__, error, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
            if self._still_wanted(served, version):
                self._spawn(self._load(served, version))
            return
        if not self._still_wanted(served, version):
            return
        served.active, served.problem, served.loading, served.failures = active, None, None, 0
        self.metrics.served_version.labels(served.key).set(version)
        log.info(
            "MetaPolicy %s: serving version %d (%s, %d slots)",
            served.key, version, active.architecture, len(active.node_names),
        )  # fmt: skip

    def _still_wanted(self, served: ServedPolicy, version: int) -> bool:
        if self.policies.get(served.key) is not served or served.pointer != version:
            return False
        return served.active is None or served.active.version != version

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----- filesystem stores ----------------------------------------------------------------
    def start(self) -> None:
        """Start polling the ACTIVE files of filesystem-backed policies."""
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            for served in list(self.policies.values()):
                if served.config.spec.storage_backend == "filesystem":
                    await self._poll_one(served)
            await asyncio.sleep(self.poll_seconds)

    async def _poll_one(self, served: ServedPolicy) -> None:
        spec = served.config.spec
        root = Path(spec.storage_path or "") / served.config.namespace / served.config.name
        try:
            store, version = await asyncio.to_thread(_read_active, served.store, root)
        except OSError as error:
            log.debug("MetaPolicy %s: %s unreadable: %s", served.key, root, error)
            return
        if self.policies.get(served.key) is not served:
            return
        served.store = store
        if version != served.pointer:
            self._point(served, version)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(
                *(t for t in [self._poller, *self._tasks] if t), return_exceptions=True
            )
        self._loader.shutdown(wait=False, cancel_futures=True)

    # ----- requests -------------------------------------------------------------------------
    def matching(self, pod: Mapping[str, Any]) -> list[ServedPolicy]:
        """The policies whose podSelector and namespaces select this pod."""
        return [served for served in self.policies.values() if served.config.places(pod)]

    def record_arrival(self, pod: PodInfo) -> None:
        if pod.created is None:
            return
        for served in self.policies.values():
            if served.config.places_info(pod):
                served.arrivals.add(pod.created, pod.uid)

    def _rebuild_arrivals(self, served: ServedPolicy) -> None:
        served.arrivals = ArrivalLog()
        for pod in self.cache.pods.values():
            if pod.created is not None and served.config.places_info(pod):
                served.arrivals.add(pod.created, pod.uid)


def _read_active(store: CheckpointStore | None, root: Path) -> tuple[CheckpointStore, int | None]:
    """(the store, the version its ACTIVE file names); blocking. Raises OSError while the
    directory cannot be opened (FilesystemStore creates it, which a read-only mount refuses)."""
    if store is None:
        if not root.is_dir():
            raise FileNotFoundError(f"{root} does not exist (yet)")
        store = FilesystemStore(root)
    return store, store.active()
