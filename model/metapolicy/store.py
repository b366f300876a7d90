"""Versioned checkpoints for policy weights: safetensors bytes plus a JSON manifest.

Weights are never pickled, so loading a checkpoint cannot execute code. Every version carries
the sha256 and length of its weights, so a truncated or bit-flipped version is refused with a
`CorruptCheckpointError` instead of being served; `latest_valid` and `load_active` skip such
versions, which is what lets the operator survive a bad write.

`encode_checkpoint` / `decode_checkpoint` are storage-agnostic so the ConfigMap-backed store in
the operator can share them; `FilesystemStore` is the local implementation.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

log = logging.getLogger(__name__)

FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
ACTIVE_FILE = "ACTIVE"
TRACE_FILE = "observed-trace.json.gz"  # the policy's recorded workload (metapolicy.observed)
JOURNAL_FILE = "JOURNAL.json"
_LOCK_FILE = ".lock"
_TMP_PREFIX = ".tmp-"  # anything starting with this is an unfinished write
_VERSION_DIR = re.compile(r"^v(\d+)$")


class CheckpointError(Exception):
    """Base for everything the store raises about stored checkpoints."""


class CorruptCheckpointError(CheckpointError):
    """A stored version exists but must not be loaded."""

    def __init__(self, reason: str, *, version: int | None = None) -> None:
        self.version = version
        self.reason = reason
        where = f"checkpoint version {version}" if version is not None else "checkpoint"
        super().__init__(f"{where} is corrupt: {reason}")


class CheckpointNotFoundError(CheckpointError, KeyError):
    """The version is not stored. A KeyError too, so `except KeyError` callers keep working."""

    __str__ = Exception.__str__  # KeyError would repr() the message


@dataclass(frozen=True)
class Checkpoint:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """Tensors as safetensors bytes. Cloned so tied or sliced parameters (shared storage, which
    safetensors refuses) save fine."""
    return safetensors.torch.save(
        {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    )


def tensors_from_bytes(weights: bytes) -> dict[str, torch.Tensor]:
    """The inverse of `tensor_bytes`."""
    return safetensors.torch.load(weights)


def encode_checkpoint(
    checkpoint: Checkpoint, version: int, *, created: datetime | None = None
) -> tuple[bytes, dict]:
    """Serialise to (safetensors bytes, manifest).

    `meta` is passed through JSON here so the returned manifest equals what a reader gets back
    from disk (tuples become lists), and a non-serialisable meta fails at save time. A naive
    `created` is taken to be UTC.
    """
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an int >= 1, got {version!r}")
    weights = tensor_bytes(checkpoint.tensors)
    created = created or datetime.now(UTC)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    manifest = {
        "format": FORMAT,
        "version": version,
        "created": created.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "sha256": hashlib.sha256(weights).hexdigest(),
        "bytes": len(weights),
        "meta": json.loads(json.dumps(checkpoint.meta)),
    }
    return weights, manifest


def check_manifest(manifest: Any, version: int | None = None) -> None:
    """Validate a manifest's shape (and, if given, that it belongs to `version`)."""
    if version is None and isinstance(manifest, dict) and isinstance(manifest.get("version"), int):
        version = manifest["version"]
    if not isinstance(manifest, dict):
        raise CorruptCheckpointError("manifest is not a JSON object", version=version)
    if manifest.get("format") != FORMAT:
        raise CorruptCheckpointError(
            f"unsupported manifest format {manifest.get('format')!r} (expected {FORMAT})",
            version=version,
        )
    for key, kind in (("version", int), ("created", str), ("sha256", str), ("bytes", int)):
        if not isinstance(manifest.get(key), kind):
            raise CorruptCheckpointError(
                f"manifest field {key!r} missing or not {kind.__name__}", version=version
            )
    if not isinstance(manifest.get("meta"), dict):
        raise CorruptCheckpointError("manifest field 'meta' missing or not dict", version=version)
    if manifest["version"] != version:
        raise CorruptCheckpointError(
            f"manifest says version {manifest['version']}", version=version
        )


def decode_checkpoint(weights: bytes, manifest: dict) -> Checkpoint:
    """Inverse of `encode_checkpoint`; checks length and sha256 before parsing a single byte."""
    check_manifest(manifest)
    version = manifest["version"]
    expected = manifest["bytes"]
    if len(weights) < expected:
        raise CorruptCheckpointError(
            f"weights truncated: {len(weights)} of {expected} bytes", version=version
        )
    if len(weights) != expected:
        raise CorruptCheckpointError(
            f"weights are {len(weights)} bytes, manifest says {expected}", version=version
        )
    digest = hashlib.sha256(weights).hexdigest()
    if digest != manifest["sha256"]:
        raise CorruptCheckpointError(
            f"sha256 mismatch: manifest {manifest['sha256'][:12]}…, weights {digest[:12]}…",
            version=version,
        )
    _check_safetensors_header(weights, version)
    try:
        tensors = safetensors.torch.load(weights)
    except Exception as e:  # SafetensorError does not share a useful base class
        raise CorruptCheckpointError(f"bad safetensors data: {e}", version=version) from e
    return Checkpoint(tensors=tensors, meta=manifest["meta"])


def _check_safetensors_header(weights: bytes, version: int) -> None:
    """Cheap sniff (8-byte little-endian length, then a JSON object) for a clearer error than
    safetensors gives when handed, say, a pickle whose manifest was forged to match."""
    size = int.from_bytes(weights[:8], "little") if len(weights) >= 8 else -1
    if size < 2 or 8 + size > len(weights) or weights[8:9] != b"{":
        raise CorruptCheckpointError(
            "bad safetensors header (not a safetensors file)", version=version
        )


#: Records kept in the journal; the CRD's status.history shows the last 50.
JOURNAL_LIMIT = 200
#: What a journal entry keeps of a record: enough for the timeline and for counting attempts
#: per node set, without the node-name lists that grow with the cluster.
JOURNAL_FIELDS = (
    "version", "parentVersion", "outcome", "reason", "reasonCodes", "strategy", "trigger",
    "attempt", "oldNodes", "newNodes", "nodeSetHash", "startedAt", "finishedAt", "drill",
    "performanceRetention", "retentionInterval", "candidateScore", "backupScore",
    "backupMaskedScore", "adaptationTime", "timeToServe", "workloadSource", "workloadTasks",
)  # fmt: skip


def compact_record(record: dict) -> dict:
    out = {k: record[k] for k in JOURNAL_FIELDS if k in record}
    if isinstance(out.get("reason"), str):
        out["reason"] = out["reason"][:500]
    return out


def record_key(record: dict) -> tuple:
    """A record's identity: the version it is about, what happened to it, and when."""
    return (record.get("version"), record.get("trigger"), record.get("finishedAt"))


def _record_order(record: dict) -> tuple:
    return (record.get("finishedAt") or "", record.get("version") or 0)


def versions_to_prune(versions: list[int], *, keep: int, active: int | None) -> list[int]:
    """The newest `keep` versions survive, and so does the active one wherever it is.

    Shared with other stores so every backend prunes the same way.
    """
    old = sorted(versions)[: max(len(versions) - keep, 0)]
    return [v for v in old if v != active]


class CheckpointStore(abc.ABC):
    """Versioned checkpoints plus the 'active' pointer saying which version is serving.

    Backends implement storage primitives; the recovery policy (skip corrupt versions, fall back
    from a broken active one) lives here so every backend recovers the same way.
    """

    keep: int

    @abc.abstractmethod
    def save(self, checkpoint: Checkpoint) -> int:
        """Store as max existing version + 1, prune beyond `keep`, return the new version."""

    @abc.abstractmethod
    def load(self, version: int) -> Checkpoint:
        """Raises CheckpointNotFoundError if absent, CorruptCheckpointError if unloadable."""

    @abc.abstractmethod
    def manifest(self, version: int) -> dict:
        """The manifest alone, without reading or verifying the weights."""

    @abc.abstractmethod
    def versions(self) -> list[int]:
        """Every stored version, valid or not, ascending."""

    @abc.abstractmethod
    def active(self) -> int | None: ...

    @abc.abstractmethod
    def set_active(self, version: int) -> None:
        """Refuses (raises) unless `version` is stored and loads cleanly."""

    @abc.abstractmethod
    def delete_all(self) -> None:
        """Every version, the active pointer and the observed trace."""

    # The observed workload trace lives next to the checkpoints and goes with them. It is opaque
    # bytes here (metapolicy.observed encodes it); a save replaces it whole, atomically.
    trace_limit: int | None = None  # bytes a stored trace may take; None: no limit

    @abc.abstractmethod
    def save_trace(self, data: bytes) -> None:
        """Replace the stored trace: readers see the old one or the new one, never a mix."""

    @abc.abstractmethod
    def load_trace(self) -> bytes | None:
        """The stored trace, or None if nothing was recorded yet."""

    # ----- the record of what happened -----------------------------------------------------
    # Each version's manifest carries the record of how it was made (written with the weights,
    # atomically). Records that make no version (a manual promote, an abort, a cancelled
    # fine-tune) and the records of pruned versions live in a journal: one small object,
    # replaced whole. Together they are the policy's history, which survives the operator, the
    # status subresource and pruning.

    @abc.abstractmethod
    def read_journal(self) -> list[dict]:
        """The journal's records ([] if there is none yet)."""

    @abc.abstractmethod
    def write_journal(self, records: list[dict]) -> None:
        """Replace the journal atomically."""

    def append_record(self, record: dict) -> None:
        """Add a record that makes no version (or keep one whose version is pruned)."""
        self.write_journal(_with(self.read_journal(), compact_record(record)))

    def manifests(self) -> dict[int, dict]:
        """Every readable manifest by version (corrupt ones are left out)."""
        found = {}
        for version in self.versions():
            try:
                found[version] = self.manifest(version)
            except CheckpointError as e:
                log.warning("%s; its record is left out of the history", e)
        return found

    def history(self) -> list[dict]:
        """Every record, oldest first: the journal's and those of the stored versions."""
        records = {record_key(r): r for r in self.read_journal()}
        for version, manifest in self.manifests().items():
            record = manifest["meta"].get("record")
            if isinstance(record, dict):
                record = record | {"version": version}
                records[record_key(record)] = record  # the full record wins over a copy
        return sorted(records.values(), key=_record_order)

    def _journal_pruned(self, versions: list[int]) -> None:
        """Copy the records of versions about to be pruned into the journal first."""
        kept = []
        for version in versions:
            try:
                record = self.manifest(version)["meta"].get("record")
            except CheckpointError:
                continue
            if isinstance(record, dict):
                kept.append(compact_record(record | {"version": version}))
        if kept:
            journal = self.read_journal()
            for record in kept:
                journal = _with(journal, record)
            self.write_journal(journal)

    def latest_valid(self) -> tuple[int, Checkpoint] | None:
        for version in reversed(self.versions()):
            try:
                return version, self.load(version)
            except CorruptCheckpointError as e:
                log.warning("%s; skipping it", e)
            except CheckpointNotFoundError:
                pass  # pruned between versions() and load()
        return None

    def load_active(self) -> tuple[int, Checkpoint] | None:
        """The serving checkpoint; if it cannot be loaded, the newest one that can."""
        version = self.active()
        if version is None:
            return self.latest_valid()
        try:
            return version, self.load(version)
        except CheckpointError as e:
            log.warning(
                "active version %d is unusable (%s); falling back to newest valid", version, e
            )
        return self.latest_valid()


def _with(journal: list[dict], record: dict) -> list[dict]:
    """The journal with `record` added (replacing one with the same identity), bounded."""
    key = record_key(record)
    kept = [r for r in journal if record_key(r) != key] + [record]
    return sorted(kept, key=_record_order)[-JOURNAL_LIMIT:]


class FilesystemStore(CheckpointStore):
    """root/v000001/{weights.safetensors,manifest.json}, root/ACTIVE, root/.lock.

    A version directory is built under a `.tmp-*` name, fsynced, then renamed into place, so
    readers see all of a version or none of it. Deletion renames away before removing for the
    same reason. Writers (save, set_active, delete_all) serialise on an flock of root/.lock,
    which the kernel releases if the process dies, so a crash never leaves the store locked and
    any `.tmp-*` seen while holding the lock is debris from a crashed writer.
    """

    def __init__(self, root: str | os.PathLike, keep: int = 5) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, checkpoint: Checkpoint) -> int:
        with self._locked():
            self._sweep()
            version = max(self.versions(), default=0) + 1
            weights, manifest = encode_checkpoint(checkpoint, version)
            tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.root))
            try:
                _write(tmp / WEIGHTS_FILE, weights)
                _write(tmp / MANIFEST_FILE, _manifest_bytes(manifest))
                _fsync_dir(tmp)
                os.replace(tmp, self._dir(version))
                _fsync_dir(self.root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # no-op once renamed
            pruned = versions_to_prune(self.versions(), keep=self.keep, active=self.active())
            self._journal_pruned(pruned)
            for old in pruned:
                self._remove(self._dir(old))
        log.info("saved checkpoint version %d to %s", version, self.root)
        return version

    def load(self, version: int) -> Checkpoint:
        manifest = self.manifest(version)
        return decode_checkpoint(self._read(version, WEIGHTS_FILE), manifest)

    def manifest(self, version: int) -> dict:
        raw = self._read(version, MANIFEST_FILE)
        try:
            manifest = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptCheckpointError(
                f"bad JSON in {MANIFEST_FILE}: {e}", version=version
            ) from e
        check_manifest(manifest, version)
        return manifest

    def versions(self) -> list[int]:
        try:
            names = [p.name for p in self.root.iterdir()]
        except FileNotFoundError:
            return []
        return sorted(int(m[1]) for m in map(_VERSION_DIR.match, names) if m)

    def active(self) -> int | None:
        try:
            text = (self.root / ACTIVE_FILE).read_text()
        except FileNotFoundError:
            return None
        try:
            return int(text)
        except ValueError:
            log.warning("ignoring unreadable %s: %r", self.root / ACTIVE_FILE, text[:40])
            return None

    def set_active(self, version: int) -> None:
        with self._locked():
            self.load(version)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root)
            os.close(fd)
            try:
                _write(Path(tmp), f"{version}\n".encode())
                os.replace(tmp, self.root / ACTIVE_FILE)
                _fsync_dir(self.root)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def read_journal(self) -> list[dict]:
        try:
            data = json.loads((self.root / JOURNAL_FILE).read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s: %s", self.root / JOURNAL_FILE, e)
            return []
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    def write_journal(self, records: list[dict]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root)
        os.close(fd)
        try:
            _write(Path(tmp), (json.dumps(records, indent=1) + "\n").encode())
            os.replace(tmp, self.root / JOURNAL_FILE)
            _fsync_dir(self.root)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def append_record(self, record: dict) -> None:
        with self._locked():
            super().append_record(record)

    def save_trace(self, data: bytes) -> None:
        """Written under a `.tmp-*` name, fsynced, then renamed over the old one: a crash
        mid-write leaves the previous trace (and debris that the next writer sweeps)."""
        with self._locked():
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root)
            os.close(fd)
            try:
                _write(Path(tmp), data)
                os.replace(tmp, self.root / TRACE_FILE)
                _fsync_dir(self.root)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def load_trace(self) -> bytes | None:
        try:
            return (self.root / TRACE_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def delete_all(self) -> None:
        with self._locked():
            for path in self.root.iterdir():
                if path.name != _LOCK_FILE:
                    self._remove(path)
            # Waiters notice the unlinked lock file and retry on a fresh one (see _locked).
            os.unlink(self.root / _LOCK_FILE)

    def _dir(self, version: int) -> Path:
        return self.root / f"v{version:06d}"

    def _read(self, version: int, name: str) -> bytes:
        try:
            return (self._dir(version) / name).read_bytes()
        except FileNotFoundError:
            if not self._dir(version).exists():
                raise CheckpointNotFoundError(
                    f"no checkpoint version {version} in {self.root}"
                ) from None
            raise CorruptCheckpointError(f"missing {name}", version=version) from None
        except OSError as e:
            raise CorruptCheckpointError(f"cannot read {name}: {e}", version=version) from e

    def _sweep(self) -> None:
        """Remove debris of crashed writers; only called with the lock held."""
        for path in self.root.glob(_TMP_PREFIX + "*"):
            log.warning("removing leftover %s from an interrupted write", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _remove(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            # Rename first so a reader never sees a half-deleted version as a corrupt one.
            trash = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + "del-", dir=self.root))
            os.replace(path, trash / path.name)
            shutil.rmtree(trash)
        else:
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.root / _LOCK_FILE
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # delete_all may have unlinked the file we locked; then our lock guards nothing.
                if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                    break
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)  # releases the flock


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
