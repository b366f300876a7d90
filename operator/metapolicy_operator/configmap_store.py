"""Checkpoints kept in ConfigMaps, so a MetaPolicy needs no volume to survive a restart.

One ConfigMap per version, ``{policy}-v{version:06d}``, holds the gzipped safetensors weights
(``binaryData``) and the manifest (``data``); one more, ``{policy}-active``, holds the active
pointer. Encoding and verification are `metapolicy.store`'s, shared with `FilesystemStore`, so
both backends refuse the same corrupt data; recovery (`latest_valid`, `load_active`) is the
ABC's, so both fall back the same way.

Why each write is safe:

* a version is written by one ``create``: it appears whole or not at all, and a name already
  taken answers 409 Conflict, so two writers never overwrite each other's version;
* the active pointer is a single object, so moving it is one atomic write;
* a version is loaded from one ``get``, so its manifest and weights come from the same write;
* the journal (``{policy}-journal``: records that made no version, and those of pruned
  versions) is one object, replaced by one write.

Big clusters: a 5,000-node manifest lists every node twice (names, profiles), about 800 KB of
JSON. Past `INLINE_NODES_LIMIT` the node list moves, gzipped, to ``binaryData`` next to the
weights (same object, same write) and is put back on read; the slot table of such a policy is
already int8 (`metapolicy.compact`). A 5,000-node node-set, hidden 64, then takes about 0.6 MB.

Every ConfigMap carries an ownerReference to its MetaPolicy, so on a real cluster the garbage
collector removes them with it. The operator still calls `delete_all`, because the embedded
emulator (KMock) has no garbage collector.

The store is synchronous (it uses the official ``kubernetes`` client); call it from async code
with ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import logging
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from metapolicy.store import (
    MANIFEST_FILE,
    TRACE_FILE,
    WEIGHTS_FILE,
    Checkpoint,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointStore,
    CorruptCheckpointError,
    check_manifest,
    decode_checkpoint,
    encode_checkpoint,
    versions_to_prune,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

WEIGHTS_KEY = WEIGHTS_FILE + ".gz"  # in binaryData
MANIFEST_KEY = MANIFEST_FILE  # in data
POINTER_KEY = "version"  # in the pointer's data
TRACE_KEY = TRACE_FILE  # in the trace's binaryData (already gzip-compressed)
NODES_KEY = "nodes.json.gz"  # in binaryData: meta.nodes and meta.node_names of a big manifest
NODE_FIELDS = ("node_names", "nodes")
#: Manifests up to this size (bytes of JSON) keep the node list inline, as they always did.
INLINE_NODES_LIMIT = 64 * 1024
JOURNAL_KEY = "records.json"  # in the journal's data

MANAGED_BY = "metapolicy-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_POLICY = "metapolicy.dev/policy"
LABEL_VERSION = "metapolicy.dev/version"
LABEL_KIND = "metapolicy.dev/kind"
KIND_CHECKPOINT = "checkpoint"
KIND_POINTER = "pointer"
KIND_TRACE = "trace"
KIND_JOURNAL = "journal"

OWNER_API_VERSION = "metapolicy.dev/v1alpha1"
OWNER_KIND = "MetaPolicy"

#: The API server refuses ConfigMaps over 1 MiB; this leaves room for metadata and overhead.
#: It is counted on the request as sent (base64 text plus manifest), which is 4/3 of what the
#: API server counts, so it also holds where the request body is capped at 1 MiB (the emulator).
MAX_BYTES = 900 * 1024

#: Seconds for one API call, so a stalled connection fails the handler instead of hanging it.
REQUEST_TIMEOUT = 30

_MAX_NAME = 253  # a ConfigMap name is a DNS subdomain
_SUFFIX_ROOM = len("-v") + 10  # "-v" plus up to 10 digits; "-active" is shorter
_MAX_LABEL_VALUE = 63
_HASH_CHARS = 10
_SAVE_ATTEMPTS = 20  # 409s in a row before giving up: only a burst of rival writers gets there


class CheckpointTooLarge(CheckpointError):
    """The checkpoint does not fit in a ConfigMap; nothing was written."""

    def __init__(self, size: int, limit: int, *, policy: str) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"checkpoint of MetaPolicy {policy!r} is {size} bytes gzipped and base64-encoded, "
            f"over the {limit}-byte limit of the configmap storage backend (ConfigMaps are "
            "capped at 1 MiB); use spec.storage.backend: filesystem with spec.storage.path "
            "on a PersistentVolumeClaim instead"
        )


class CheckpointApiError(CheckpointError):
    """The Kubernetes API refused or failed a call; `status` is None if it was not reached."""

    def __init__(self, what: str, status: int | None, reason: str) -> None:
        self.status = status
        self.reason = reason
        where = f"HTTP {status} {reason}" if status is not None else reason
        super().__init__(f"cannot {what}: {where}")


class ConfigMapStore(CheckpointStore):
    """Versioned checkpoints of one MetaPolicy as ConfigMaps in its namespace."""

    max_bytes: int = MAX_BYTES
    #: base64 makes 3 bytes 4: what a trace may take before encoding, with room for metadata
    trace_limit: int = (MAX_BYTES - 4096) * 3 // 4

    def __init__(
        self,
        core: kubernetes.client.CoreV1Api,
        namespace: str,
        policy: str,
        owner: Mapping[str, Any] | None = None,
        keep: int = 5,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if not policy:
            raise ValueError("policy name must not be empty")
        self.core = core
        self.namespace = namespace
        self.policy = policy
        self.keep = keep
        self.owner_references = [_owner_reference(owner, namespace)] if owner else []
        self.prefix = _name_prefix(policy)
        self.policy_label = _label_value(policy)
        self._version_name = re.compile(rf"^{re.escape(self.prefix)}-v(\d+)$")

    # -- the CheckpointStore interface ------------------------------------------------------

    def save(self, checkpoint: Checkpoint) -> int:
        version = max(self.versions(), default=0) + 1
        for _ in range(_SAVE_ATTEMPTS):
            body = self._version_body(checkpoint, version)  # raises before any write if too big
            try:
                self._call(
                    f"create ConfigMap {body['metadata']['name']}",
                    self.core.create_namespaced_config_map,
                    self.namespace,
                    body,
                )
                break
            except CheckpointApiError as e:
                if e.status != 409:
                    raise
                # A rival writer (or an unrelated ConfigMap) has this name: never overwrite it.
                log.info("ConfigMap %s exists; trying the next version", self._name(version))
                version = max(max(self.versions(), default=0), version) + 1
        else:
            raise CheckpointError(
                f"no free version number for MetaPolicy {self.policy!r} after "
                f"{_SAVE_ATTEMPTS} conflicts"
            )
        self._prune()
        log.info("saved checkpoint version %d of %s/%s", version, self.namespace, self.policy)
        return version

    def load(self, version: int) -> Checkpoint:
        config_map = self._read_version(version)
        manifest = self._parse_manifest(config_map, version)
        return decode_checkpoint(self._parse_weights(config_map, version, manifest), manifest)

    def manifest(self, version: int) -> dict:
        return self._parse_manifest(self._read_version(version), version)

    def versions(self) -> list[int]:
        found = []
        for config_map in self._list(KIND_CHECKPOINT):
            match = self._version_name.match(config_map.metadata.name)
            if match:
                found.append(int(match[1]))
        return sorted(found)

    def active(self) -> int | None:
        config_map = self._read(self._pointer_name())
        if config_map is None:
            return None
        if not self._is_ours(config_map, KIND_POINTER):
            log.warning(
                "ignoring ConfigMap %s: not an active pointer of ours", self._pointer_name()
            )
            return None
        text = (config_map.data or {}).get(POINTER_KEY, "")
        try:
            return int(text)
        except ValueError:
            log.warning("ignoring unreadable pointer %s: %r", self._pointer_name(), text[:40])
            return None

    def set_active(self, version: int) -> None:
        self.load(version)  # refuses a missing or corrupt version before the pointer moves
        content = {"data": {POINTER_KEY: str(version)}}
        self._upsert(self._pointer_name(), KIND_POINTER, "active pointer", content)

    def save_trace(self, data: bytes) -> None:
        """One ConfigMap, `{policy}-trace`, created or updated by one write (a patch replacing
        its one key): the API server stores the whole object or nothing, so a kill mid-write
        keeps the previous trace."""
        if len(data) > self.trace_limit:
            raise CheckpointError(
                f"observed trace of MetaPolicy {self.policy!r} is {len(data)} bytes, over the "
                f"{self.trace_limit}-byte limit of a ConfigMap"
            )
        content = {"binaryData": {TRACE_KEY: base64.b64encode(data).decode("ascii")}}
        self._upsert(self._trace_name(), KIND_TRACE, "observed trace", content)

    def load_trace(self) -> bytes | None:
        config_map = self._read(self._trace_name())
        if config_map is None or not self._is_ours(config_map, KIND_TRACE):
            return None
        packed = (config_map.binary_data or {}).get(TRACE_KEY)
        if packed is None:
            return None
        try:
            return base64.b64decode(packed, validate=True)
        except (binascii.Error, ValueError) as e:
            raise CheckpointError(f"bad base64 in ConfigMap {self._trace_name()}: {e}") from e

    def delete_all(self) -> None:
        # List + delete, not deletecollection: KMock does not serve deletecollection, and this
        # deletes exactly the ConfigMaps checked to be ours (see `_list`).
        for config_map in self._list(None):
            self._delete(config_map.metadata.name)

    def manifests(self) -> dict[int, dict]:
        """One list call, not a read per version."""
        found = {}
        for config_map in self._list(KIND_CHECKPOINT):
            version = int(self._version_name.match(config_map.metadata.name)[1])
            try:
                found[version] = self._parse_manifest(config_map, version)
            except CheckpointError as e:
                log.warning("%s; its record is left out of the history", e)
        return found

    def read_journal(self) -> list[dict]:
        config_map = self._read(self._journal_name())
        if config_map is None or not self._is_ours(config_map, KIND_JOURNAL):
            return []
        try:
            records = json.loads((config_map.data or {}).get(JOURNAL_KEY) or "[]")
        except json.JSONDecodeError as e:
            log.warning("ignoring unreadable journal %s: %s", self._journal_name(), e)
            return []
        return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []

    def write_journal(self, records: list[dict]) -> None:
        content = {"data": {JOURNAL_KEY: json.dumps(records, separators=(",", ":"))}}
        self._upsert(self._journal_name(), KIND_JOURNAL, "journal", content)

    def _upsert(self, name: str, kind: str, role: str, content: dict[str, Any]) -> None:
        """Create the policy's ConfigMap `name` with `content` (its data or binaryData), or
        replace that content with one patch: one write either way, so a kill mid-write leaves
        the old content or the new. A ConfigMap of that name that is not ours (not the policy's
        `role`) is refused, never overwritten."""
        existing = self._read(name)
        if existing is None:
            body = {"metadata": self._metadata(name, kind)} | content
            try:
                self._call(
                    f"create ConfigMap {name}", self.core.create_namespaced_config_map,
                    self.namespace, body,
                )  # fmt: skip
                return
            except CheckpointApiError as e:
                if e.status != 409:
                    raise
                existing = self._read(name)  # created meanwhile: update it like any other
        if existing is not None and not self._is_ours(existing, kind):
            raise CheckpointError(
                f"ConfigMap {self.namespace}/{name} exists but is not the {role} of "
                f"MetaPolicy {self.policy!r}; not overwriting it"
            )
        self._call(
            f"update ConfigMap {name}", self.core.patch_namespaced_config_map,
            name, self.namespace, content,
        )  # fmt: skip

    # -- ConfigMap layout -------------------------------------------------------------------

    def _name(self, version: int) -> str:
        return f"{self.prefix}-v{version:06d}"

    def _pointer_name(self) -> str:
        return f"{self.prefix}-active"

    def _trace_name(self) -> str:
        return f"{self.prefix}-trace"

    def _journal_name(self) -> str:
        return f"{self.prefix}-journal"

    def _metadata(self, name: str, kind: str, version: int | None = None) -> dict[str, Any]:
        labels = {
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_POLICY: self.policy_label,
            LABEL_KIND: kind,
        }
        if version is not None:
            labels[LABEL_VERSION] = str(version)
        metadata: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": labels}
        if self.owner_references:
            metadata["ownerReferences"] = [dict(ref) for ref in self.owner_references]
        return metadata

    def _version_body(self, checkpoint: Checkpoint, version: int) -> dict[str, Any]:
        weights, manifest = encode_checkpoint(checkpoint, version)
        binary = {WEIGHTS_KEY: base64.b64encode(gzip.compress(weights, mtime=0)).decode("ascii")}
        manifest_text = json.dumps(manifest, indent=2) + "\n"
        if len(manifest_text) > INLINE_NODES_LIMIT:
            meta = dict(manifest["meta"])
            nodes = {key: meta.pop(key) for key in NODE_FIELDS if key in meta}
            text = json.dumps(nodes, separators=(",", ":")).encode()
            binary[NODES_KEY] = base64.b64encode(gzip.compress(text, mtime=0)).decode("ascii")
            manifest_text = json.dumps(manifest | {"meta": meta}, indent=2) + "\n"
        size = sum(len(v) for v in binary.values()) + len(manifest_text.encode())
        if size > self.max_bytes:
            raise CheckpointTooLarge(size, self.max_bytes, policy=self.policy)
        return {
            "metadata": self._metadata(self._name(version), KIND_CHECKPOINT, version),
            "binaryData": binary,
            "data": {MANIFEST_KEY: manifest_text},
        }

    def _parse_manifest(self, config_map: Any, version: int) -> dict:
        text = (config_map.data or {}).get(MANIFEST_KEY)
        if text is None:
            raise CorruptCheckpointError(f"missing data.{MANIFEST_KEY}", version=version)
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as e:
            raise CorruptCheckpointError(f"bad JSON in {MANIFEST_KEY}: {e}", version=version) from e
        check_manifest(manifest, version)
        packed = (config_map.binary_data or {}).get(NODES_KEY)
        if packed is not None:
            manifest["meta"].update(self._parse_nodes(packed, version))
        return manifest

    def _parse_nodes(self, packed: str, version: int) -> dict:
        """The node list a big manifest keeps in binaryData (bounded like the weights)."""
        try:
            inflater = zlib.decompressobj(wbits=31)
            text = inflater.decompress(base64.b64decode(packed, validate=True), self.max_bytes * 64)
            nodes = json.loads(text)
        except (binascii.Error, ValueError, zlib.error) as e:
            raise CorruptCheckpointError(f"bad {NODES_KEY}: {e}", version=version) from e
        if not inflater.eof or not isinstance(nodes, dict) or set(nodes) - set(NODE_FIELDS):
            raise CorruptCheckpointError(f"bad {NODES_KEY}: not a node list", version=version)
        return nodes

    def _parse_weights(self, config_map: Any, version: int, manifest: dict) -> bytes:
        packed = (config_map.binary_data or {}).get(WEIGHTS_KEY)
        if packed is None:
            raise CorruptCheckpointError(f"missing binaryData.{WEIGHTS_KEY}", version=version)
        try:
            compressed = base64.b64decode(packed, validate=True)
        except (binascii.Error, ValueError) as e:
            raise CorruptCheckpointError(
                f"bad base64 in {WEIGHTS_KEY}: {e}", version=version
            ) from e
        # Inflate at most one byte past the manifest's length: a forged or damaged entry can
        # neither exhaust memory nor pass as complete (decode_checkpoint checks the length).
        inflater = zlib.decompressobj(wbits=31)  # gzip container
        try:
            weights = inflater.decompress(compressed, max(manifest["bytes"], 0) + 1)
        except zlib.error as e:
            raise CorruptCheckpointError(f"bad gzip in {WEIGHTS_KEY}: {e}", version=version) from e
        if len(weights) <= manifest["bytes"] and not inflater.eof:
            raise CorruptCheckpointError(f"truncated gzip in {WEIGHTS_KEY}", version=version)
        return weights

    # -- API calls --------------------------------------------------------------------------

    def _read_version(self, version: int) -> Any:
        name = self._name(version)
        config_map = self._read(name)
        if config_map is None:
            raise CheckpointNotFoundError(
                f"no checkpoint version {version} of MetaPolicy {self.policy!r} "
                f"(ConfigMap {self.namespace}/{name})"
            )
        if not self._is_ours(config_map, KIND_CHECKPOINT):
            raise CorruptCheckpointError(
                f"ConfigMap {name} is not labelled as a checkpoint of {self.policy!r}",
                version=version,
            )
        return config_map

    def _read(self, name: str) -> Any | None:
        try:
            return self._call(
                f"read ConfigMap {name}", self.core.read_namespaced_config_map, name, self.namespace
            )
        except CheckpointApiError as e:
            if e.status == 404:
                return None
            raise

    def _list(self, kind: str | None) -> list[Any]:
        """This policy's ConfigMaps (of one kind, or all).

        The labels are checked again here: KMock ignores label selectors and lists everything,
        and a hashed label value of a long policy name could in theory be shared.
        """
        selector = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_POLICY: self.policy_label}
        if kind is not None:
            selector[LABEL_KIND] = kind
        result = self._call(
            f"list ConfigMaps of MetaPolicy {self.policy!r}",
            self.core.list_namespaced_config_map,
            self.namespace,
            label_selector=",".join(f"{k}={v}" for k, v in selector.items()),
        )
        names = {
            name
            for name, name_kind in (
                (self._pointer_name(), KIND_POINTER),
                (self._journal_name(), KIND_JOURNAL),
                (self._trace_name(), KIND_TRACE),
            )
            if kind in (None, name_kind)
        }
        return [
            item
            for item in result.items
            if all((item.metadata.labels or {}).get(k) == v for k, v in selector.items())
            and (item.metadata.name in names or self._version_name.match(item.metadata.name))
        ]

    def _delete(self, name: str) -> None:
        try:
            self._call(
                f"delete ConfigMap {name}",
                self.core.delete_namespaced_config_map,
                name,
                self.namespace,
            )
        except CheckpointApiError as e:
            if e.status != 404:  # already gone is what we wanted
                raise

    def _prune(self) -> None:
        pruned = versions_to_prune(self.versions(), keep=self.keep, active=self.active())
        self._journal_pruned(pruned)
        for old in pruned:
            self._delete(self._name(old))

    def _is_ours(self, config_map: Any, kind: str) -> bool:
        labels = config_map.metadata.labels or {}
        return labels.get(LABEL_POLICY) == self.policy_label and labels.get(LABEL_KIND) == kind

    def _call(self, what: str, method: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Every API error as a CheckpointError that names the call, the status and the reason."""
        try:
            return method(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as e:
            raise CheckpointApiError(
                f"{what} in namespace {self.namespace!r}", e.status, str(e.reason)
            ) from e
        except urllib3.exceptions.HTTPError as e:
            raise CheckpointApiError(
                f"{what} in namespace {self.namespace!r}", None, f"{type(e).__name__}: {e}"
            ) from e


def _owner_reference(owner: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """A controller reference to the MetaPolicy, so the garbage collector deletes with it."""
    metadata = owner.get("metadata") or {}
    name, uid = metadata.get("name"), metadata.get("uid")
    if not name or not uid:
        raise ValueError("owner needs metadata.name and metadata.uid")
    if metadata.get("namespace") not in (None, namespace):
        # The garbage collector ignores (and deletes dependents of) cross-namespace owners.
        raise ValueError(f"owner is in namespace {metadata['namespace']!r}, not {namespace!r}")
    return {
        "apiVersion": owner.get("apiVersion") or OWNER_API_VERSION,
        "kind": owner.get("kind") or OWNER_KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


def _name_prefix(policy: str) -> str:
    """The policy name, or a truncated one plus a hash if a version's name would be too long."""
    if len(policy) + _SUFFIX_ROOM <= _MAX_NAME:
        return policy
    head = policy[: _MAX_NAME - _SUFFIX_ROOM - _HASH_CHARS - 1].rstrip("-.")
    return f"{head}-{_short_hash(policy)}"


def _label_value(policy: str) -> str:
    """The policy name, or a truncated one plus a hash: label values are at most 63 chars."""
    if len(policy) <= _MAX_LABEL_VALUE:
        return policy
    head = policy[: _MAX_LABEL_VALUE - _HASH_CHARS - 1].rstrip("-._")
    return f"{head}-{_short_hash(policy)}"
