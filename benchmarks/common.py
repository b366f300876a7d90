"""Shared benchmark plumbing: where results go and what machine produced them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def uncommitted_changes() -> list[str]:
    """Files with local edits in the code a benchmark runs: the revision alone does not say
    what ran."""
    paths = ["model", "operator", "e2e", "crds", "benchmarks"]
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ["unknown (not a git checkout)"]
    changed = [line[3:] for line in out.splitlines()]
    return [path for path in changed if not path.startswith("benchmarks/results/")]


def machine_info() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "git": git_revision(),
        "uncommitted": uncommitted_changes(),
    }


def write_json(path: str, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=float) + "\n")


def bootstrap(ref, returns: np.ndarray, samples: int = 1000, seed: int = 0) -> tuple:
    """90% paired bootstrap interval of S over the episodes."""
    n = len(returns)
    draws = np.random.default_rng(seed).integers(0, n, (samples, n))
    scores = ref.resampled_scores(returns, draws)
    return tuple(float(q) for q in np.quantile(scores, [0.05, 0.95]))
