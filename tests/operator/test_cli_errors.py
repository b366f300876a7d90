"""Every user error of the command line: one line on stderr, exit code 2, no traceback.
Driven through the real console script, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

METAPOLICY = str(Path(sys.executable).parent / "metapolicy")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([METAPOLICY, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("cli") / "store")
    done = run("train", "--store", path, "--nodes", "4", "--steps", "1024", "--hidden", "8")
    assert done.returncode == 0, done.stderr
    return path


def nodes_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "nodes.yaml"
    path.write_text(text)
    return str(path)


CASES = {
    "unknown node": (
        lambda store, tmp: ["adapt", "--store", store, "--remove", "node-99"],
        "cannot remove node-99: the active policy's nodes are node-00, node-01, node-02, node-03",
    ),
    "every node": (
        lambda store, tmp: [
            "adapt",
            "--store",
            store,
            "--remove",
            "node-00",
            "node-01",
            "node-02",
            "node-03",
        ],
        "cannot remove every node",
    ),
    "too many nodes": (
        lambda store, tmp: ["adapt", "--store", store, "--add", "30"],
        "34 eligible nodes exceed maxNodes=20",
    ),
    "missing store": (
        lambda store, tmp: ["adapt", "--store", str(tmp / "nowhere"), "--add", "1"],
        "no checkpoint store at",
    ),
    "missing store, inspect": (
        lambda store, tmp: ["inspect", "--store", str(tmp / "nowhere")],
        "no checkpoint store at",
    ),
    "unreadable nodes file": (
        lambda store, tmp: ["train", "--store", str(tmp / "s"), "--nodes-file", str(tmp / "x")],
        "cannot read nodes file",
    ),
    "nodes file not a list": (
        lambda store, tmp: [
            "train",
            "--store",
            str(tmp / "s"),
            "--nodes-file",
            nodes_file(tmp, "name: a\ncpu: 4\n"),
        ],
        "must be a YAML list",
    ),
    "nodes file not YAML": (
        lambda store, tmp: [
            "train",
            "--store",
            str(tmp / "s"),
            "--nodes-file",
            nodes_file(tmp, "- {name: a, cpu: ["),
        ],
        "is not YAML",
    ),
    "negative cpu": (
        lambda store, tmp: [
            "train",
            "--store",
            str(tmp / "s"),
            "--nodes-file",
            nodes_file(tmp, "- {name: a, cpu: -4, memory_mib: 1024, latency_ms: 2}\n"),
        ],
        "node a: cpu=-4 must be positive",
    ),
    "missing field": (
        lambda store, tmp: [
            "train",
            "--store",
            str(tmp / "s"),
            "--nodes-file",
            nodes_file(tmp, "- {name: a, cpu: 4}\n"),
        ],
        "node a: missing ['latency_ms', 'memory_mib']",
    ),
    "duplicate node": (
        lambda store, tmp: [
            "train",
            "--store",
            str(tmp / "s"),
            "--nodes-file",
            nodes_file(tmp, "- {name: a, cpu: 4, memory_mib: 1024, latency_ms: 2}\n" * 2),
        ],
        "node a appears twice",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_user_error_is_one_line_and_exit_code_2(case, store, tmp_path):
    argv, message = CASES[case]
    done = run(*argv(store, tmp_path))
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("metapolicy ") and message in lines[0], lines[0]


def test_a_rejected_adaptation_changed_nothing(store):
    """The unknown-node case above must not have stored a candidate (it used to, silently)."""
    listing = run("inspect", "--store", store)
    assert listing.returncode == 0 and listing.stdout.count("\n") == 1, listing.stdout
