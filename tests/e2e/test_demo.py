"""`python -m e2e.demo --fast`: the one-command demo runs green end to end, the policy's
placements included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_the_fast_demo_plays_every_step_and_catches_the_drill():
    result = subprocess.run(
        [sys.executable, "-m", "e2e.demo", "--fast"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "demo OK" in output
    rows = [line for line in result.stdout.splitlines() if line.startswith("+")]
    events = [row.split()[1] for row in rows]
    assert events[0] == "train" and events[-1] == "drill", rows
    assert rows[-1].rstrip().endswith("rolled_back"), rows
    assert "/metrics was served at http://127.0.0.1:" in output
    # The placement half: pods placed through metapolicy serve, by the policy among others,
    # per node next to the default rule alone, and the nodes that joined got pods.
    lines = result.stdout.splitlines()
    assert any(line.strip().endswith("decided by the policy") for line in lines), output[-3000:]
    table = lines.index("node          joined            pods    cpu                 pods    cpu")
    assert lines[table + 1].startswith("edge-01 ")
    joined = lines.index("nodes that joined while the policy served: join -> first pod bound")
    assert [line.split()[0] for line in lines[joined + 1 : joined + 5]] == [
        "edge-07", "edge-08", "edge-09", "edge-10"
    ]  # fmt: skip
