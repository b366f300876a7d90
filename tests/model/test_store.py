import hashlib
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

import metapolicy.store as store_module
from metapolicy.store import (
    Checkpoint,
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    FilesystemStore,
    decode_checkpoint,
    encode_checkpoint,
    versions_to_prune,
)


def make_checkpoint(seed: int = 0) -> Checkpoint:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "actor.0.weight": torch.randn(4, 3, generator=g),
        "actor.0.bias": torch.randn(4, generator=g),
        "steps": torch.tensor(seed, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }
    meta = {
        "architecture": "gnn-actor-critic",
        "node_names": ["node-b", "node-a", "node-c"],  # order matters; must survive as-is
        "node_profiles": {"node-b": {"cpu": 4.0}, "node-a": {"cpu": 8.0}},
        "strategy": "finetune",
        "scores": {"reward": 1.25 + seed},
    }
    return Checkpoint(tensors=tensors, meta=meta)


def assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.tensors.keys() == b.tensors.keys()
    for name, t in a.tensors.items():
        assert b.tensors[name].dtype == t.dtype, name
        assert torch.equal(b.tensors[name], t), name
    assert a.meta == b.meta


def weights_path(root: Path, version: int) -> Path:
    return root / f"v{version:06d}" / "weights.safetensors"


def manifest_path(root: Path, version: int) -> Path:
    return root / f"v{version:06d}" / "manifest.json"


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside tensor data, so only the checksum can notice
    path.write_bytes(bytes(data))


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "ckpt", keep=5)


def test_round_trip(store: FilesystemStore) -> None:
    ckpt = make_checkpoint()
    version = store.save(ckpt)

    assert version == 1
    assert_same(ckpt, store.load(1))
    manifest = store.manifest(1)
    data = weights_path(store.root, 1).read_bytes()
    assert manifest["format"] == 1
    assert manifest["version"] == 1
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["bytes"] == len(data)
    assert manifest["meta"] == ckpt.meta
    created = datetime.fromisoformat(manifest["created"])
    assert created.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60


def test_encode_handles_shared_and_non_contiguous_tensors() -> None:
    w = torch.randn(3, 5)
    # Tied weights share storage and a transpose is non-contiguous; safetensors refuses both raw.
    ckpt = Checkpoint(tensors={"enc": w, "dec": w, "t": w.t()}, meta={"sizes": (3, 5)})
    created = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

    weights, manifest = encode_checkpoint(ckpt, 7, created=created)
    back = decode_checkpoint(weights, manifest)

    assert manifest["created"] == "2024-01-02T03:04:05Z"
    assert manifest["version"] == 7
    assert torch.equal(back.tensors["dec"], w)
    assert torch.equal(back.tensors["t"], w.t())
    assert back.meta == {"sizes": [3, 5]}  # same shape a reader gets back from JSON


def test_versions_increase_and_old_ones_are_pruned(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path, keep=3)

    saved = [store.save(make_checkpoint(i)) for i in range(5)]

    assert saved == [1, 2, 3, 4, 5]
    assert store.versions() == [3, 4, 5]
    assert_same(make_checkpoint(4), store.load(5))
    with pytest.raises(CheckpointNotFoundError):
        store.load(1)


def test_pruning_never_removes_the_active_version(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path, keep=2)
    store.save(make_checkpoint(1))
    store.set_active(1)

    for i in range(2, 5):
        store.save(make_checkpoint(i))

    assert store.versions() == [1, 3, 4]
    assert store.active() == 1
    assert_same(make_checkpoint(1), store.load(1))


@pytest.mark.parametrize(
    ("versions", "keep", "active", "expected"),
    [
        ([1, 2, 3], 5, None, []),
        ([1, 2, 3, 4], 2, None, [1, 2]),
        ([1, 2, 3, 4], 2, 1, [2]),
        ([1, 2, 3, 4], 2, 4, [1, 2]),
    ],
)
def test_versions_to_prune(versions, keep, active, expected) -> None:
    assert versions_to_prune(versions, keep=keep, active=active) == expected


def test_flipped_byte_is_detected(store: FilesystemStore) -> None:
    store.save(make_checkpoint(1))
    store.save(make_checkpoint(2))
    flip_last_byte(weights_path(store.root, 2))

    with pytest.raises(CorruptCheckpointError, match=r"version 2 .*sha256 mismatch") as info:
        store.load(2)
    assert info.value.version == 2
    assert_same(make_checkpoint(1), store.load(1))


def test_truncated_weights_are_detected(store: FilesystemStore) -> None:
    store.save(make_checkpoint())
    path = weights_path(store.root, 1)
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(CorruptCheckpointError, match=r"version 1 .*truncated"):
        store.load(1)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "missing manifest.json"),
        (lambda p: p.write_text('{"format": 1, "vers'), "bad JSON"),
        (lambda p: p.write_text("[1, 2]"), "not a JSON object"),
        (lambda p: p.write_text(json.dumps({"format": 99})), "unsupported manifest format"),
    ],
)
def test_missing_or_garbled_manifest(store: FilesystemStore, damage, message) -> None:
    store.save(make_checkpoint())
    damage(manifest_path(store.root, 1))

    with pytest.raises(CorruptCheckpointError, match=rf"version 1 .*{message}"):
        store.manifest(1)
    with pytest.raises(CorruptCheckpointError, match=message):
        store.load(1)
    assert store.versions() == [1]


def test_missing_weights_file(store: FilesystemStore) -> None:
    store.save(make_checkpoint())
    weights_path(store.root, 1).unlink()

    with pytest.raises(CorruptCheckpointError, match=r"missing weights\.safetensors"):
        store.load(1)


def test_version_directory_copied_under_another_number_is_refused(
    store: FilesystemStore,
) -> None:
    store.save(make_checkpoint())
    (store.root / "v000002").mkdir()
    for name in ("weights.safetensors", "manifest.json"):
        (store.root / "v000002" / name).write_bytes((store.root / "v000001" / name).read_bytes())

    with pytest.raises(CorruptCheckpointError, match="manifest says version 1"):
        store.load(2)


def test_absent_version_is_not_found(store: FilesystemStore) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint version 42"):
        store.load(42)
    with pytest.raises(KeyError):
        store.manifest(42)


def test_latest_valid_skips_a_corrupt_newest_version(store: FilesystemStore, caplog) -> None:
    store.save(make_checkpoint(1))
    store.save(make_checkpoint(2))
    flip_last_byte(weights_path(store.root, 2))

    with caplog.at_level(logging.WARNING, logger="metapolicy.store"):
        version, ckpt = store.latest_valid()

    assert version == 1
    assert_same(make_checkpoint(1), ckpt)
    assert "version 2 is corrupt" in caplog.text


def test_latest_valid_is_none_without_a_loadable_version(store: FilesystemStore) -> None:
    assert store.latest_valid() is None
    store.save(make_checkpoint())
    flip_last_byte(weights_path(store.root, 1))
    assert store.latest_valid() is None
    assert store.load_active() is None


def test_load_active_returns_the_active_version(store: FilesystemStore) -> None:
    for i in range(1, 4):
        store.save(make_checkpoint(i))
    assert store.load_active()[0] == 3  # no pointer yet: newest valid

    store.set_active(2)
    version, ckpt = store.load_active()

    assert version == 2
    assert_same(make_checkpoint(2), ckpt)


def test_load_active_falls_back_when_active_is_corrupt(store: FilesystemStore, caplog) -> None:
    for i in range(1, 4):
        store.save(make_checkpoint(i))
    store.set_active(2)
    flip_last_byte(weights_path(store.root, 3))
    flip_last_byte(weights_path(store.root, 2))

    with caplog.at_level(logging.WARNING, logger="metapolicy.store"):
        version, ckpt = store.load_active()

    assert version == 1
    assert_same(make_checkpoint(1), ckpt)
    assert "active version 2 is unusable" in caplog.text
    assert store.active() == 2  # reading never moves the pointer


def test_load_active_falls_back_when_active_is_missing(store: FilesystemStore) -> None:
    store.save(make_checkpoint())
    (store.root / "ACTIVE").write_text("9\n")

    assert store.load_active()[0] == 1


def test_set_active_refuses_missing_or_corrupt_versions(store: FilesystemStore) -> None:
    store.save(make_checkpoint(1))
    store.save(make_checkpoint(2))
    store.set_active(1)
    flip_last_byte(weights_path(store.root, 2))

    with pytest.raises(CheckpointNotFoundError):
        store.set_active(7)
    with pytest.raises(CorruptCheckpointError):
        store.set_active(2)
    assert store.active() == 1


def test_failed_commit_leaves_previous_state_intact(store: FilesystemStore, monkeypatch) -> None:
    store.save(make_checkpoint(1))

    def boom(src, dst):
        raise OSError("disk vanished")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", boom)
        with pytest.raises(OSError, match="disk vanished"):
            store.save(make_checkpoint(2))

    assert store.versions() == [1]
    assert store.latest_valid()[0] == 1
    assert sorted(p.name for p in store.root.iterdir()) == [".lock", "v000001"]
    assert store.save(make_checkpoint(2)) == 2
    assert_same(make_checkpoint(2), store.load(2))


def test_crash_mid_write_leaves_debris_that_is_ignored_then_cleaned(
    store: FilesystemStore,
) -> None:
    store.save(make_checkpoint(1))
    # A real crash: the child dies inside save() with the version half-built and the lock held.
    child = textwrap.dedent(
        f"""
        import os, torch
        from metapolicy.store import Checkpoint, FilesystemStore
        os.fsync = lambda fd: os._exit(17)
        FilesystemStore({str(store.root)!r}).save(Checkpoint({{"w": torch.ones(3)}}, {{}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", child], timeout=120)
    assert result.returncode == 17

    debris = [p for p in store.root.iterdir() if p.name.startswith(".tmp-")]
    assert debris, "the child should have died mid-write"
    assert store.versions() == [1]
    assert store.latest_valid()[0] == 1

    assert store.save(make_checkpoint(3)) == 2  # the lock died with the child
    assert not [p for p in store.root.iterdir() if p.name.startswith(".tmp-")]
    assert_same(make_checkpoint(1), store.load(1))
    assert_same(make_checkpoint(3), store.load(2))


def test_concurrent_saves_never_reuse_a_version(tmp_path: Path) -> None:
    stores = [FilesystemStore(tmp_path, keep=100) for _ in range(2)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        saved = list(pool.map(lambda i: stores[i % 2].save(make_checkpoint(i)), range(12)))

    assert sorted(saved) == list(range(1, 13))
    assert stores[0].versions() == list(range(1, 13))
    assert all(stores[1].load(v) for v in saved)


def test_weights_file_is_safetensors_not_pickle(store: FilesystemStore) -> None:
    store.save(make_checkpoint())
    data = weights_path(store.root, 1).read_bytes()

    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    assert set(header) >= {"actor.0.weight", "actor.0.bias", "steps", "mask"}
    assert not data.startswith(b"\x80")  # pickle protocol 2+ opcode


unpickled = []


def _record_unpickling() -> None:
    unpickled.append(True)


class _Payload:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_decode_refuses_a_pickle_even_with_a_matching_manifest() -> None:
    payload = pickle.dumps({"actor.0.weight": _Payload()})
    manifest = {
        "format": 1,
        "version": 3,
        "created": "2024-01-01T00:00:00Z",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "meta": {},
    }

    with pytest.raises(CorruptCheckpointError, match=r"version 3 .*safetensors header"):
        decode_checkpoint(payload, manifest)
    assert not unpickled


def test_store_module_has_no_pickle_path() -> None:
    source = Path(store_module.__file__).read_text()
    assert not re.search(r"(?<![\w.])torch\.(save|load)\(|\bimport pickle\b|\bpickle\.", source)


def test_delete_all_empties_the_root(store: FilesystemStore) -> None:
    store.save(make_checkpoint(1))
    store.save(make_checkpoint(2))
    store.set_active(2)

    store.delete_all()

    assert store.root.is_dir()
    assert list(store.root.iterdir()) == []
    assert store.versions() == []
    assert store.active() is None
    assert store.save(make_checkpoint(3)) == 1


def test_checkpoint_errors_share_a_base() -> None:
    assert issubclass(CorruptCheckpointError, CheckpointError)
    assert issubclass(CheckpointNotFoundError, CheckpointError)
    assert str(CheckpointNotFoundError("no checkpoint version 4")) == "no checkpoint version 4"


# ----- the records: manifests and journal --------------------------------------------------------
def with_record(seed: int, **record) -> Checkpoint:
    checkpoint = make_checkpoint(seed)
    finished = f"2026-11-27T12:00:{seed:02d}Z"
    meta = checkpoint.meta | {"record": {"outcome": "promoted", "finishedAt": finished, **record}}
    return Checkpoint(tensors=checkpoint.tensors, meta=meta)


def test_history_holds_every_record_even_of_pruned_versions(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path, keep=2)
    for seed in range(1, 5):
        store.save(with_record(seed, trigger="nodes", reasonCodes=["validated"], timings={"x": 1}))
    store.append_record({"outcome": "aborted", "trigger": "abort", "version": 4,
                         "finishedAt": "2026-11-27T12:00:30Z"})  # fmt: skip
    assert store.versions() == [3, 4]
    history = store.history()
    assert [(r["version"], r["outcome"]) for r in history] == [
        (1, "promoted"), (2, "promoted"), (3, "promoted"), (4, "promoted"), (4, "aborted"),
    ]  # fmt: skip
    # the pruned versions' records were copied to the journal, compact
    journal = {r["version"]: r for r in store.read_journal()}
    assert set(journal) == {1, 2, 4}
    assert "timings" not in journal[1] and journal[1]["reasonCodes"] == ["validated"]
    assert "timings" in history[2]  # a live version's full record


def test_the_journal_is_bounded_replaced_atomically_and_removed_with_the_store(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(store_module, "JOURNAL_LIMIT", 3)
    store = FilesystemStore(tmp_path)
    for i in range(5):
        store.append_record({"trigger": "abort", "finishedAt": f"2026-11-27T12:00:0{i}Z"})
    assert [r["finishedAt"][-3:] for r in store.read_journal()] == ["02Z", "03Z", "04Z"]
    assert not list(tmp_path.glob(".tmp-*"))
    (tmp_path / store_module.JOURNAL_FILE).write_text("{not json")
    assert store.read_journal() == []  # unreadable: ignored, with a warning
    store.delete_all()
    assert not (tmp_path / store_module.JOURNAL_FILE).exists()
