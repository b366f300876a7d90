"""`--workload` for train and adapt, and `metapolicy evaluate`, driven through the CLI's main."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metapolicy.features import PodAttributes
from metapolicy.observed import ObservedTrace, PodRecord
from metapolicy.store import FilesystemStore
from metapolicy.trace_files import from_tasks, write_generic
from metapolicy_operator.cli import main

FIXTURES = Path(__file__).parents[1] / "model" / "fixtures"
FAST = ["--steps", "1024", "--hidden", "16", "--episode-tasks", "32"]


@pytest.fixture
def trace_csv(tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    n = 300
    trace = from_tasks(
        arrival=np.cumsum(rng.exponential(5.0, n)),
        cpu=rng.choice([0.5, 1.0, 4.0], n),
        memory=rng.choice([512.0, 4096.0], n),
        duration=rng.exponential(60.0, n) + 1,
        attributes=[PodAttributes(qos="Guaranteed" if i % 2 else "BestEffort") for i in range(n)],
    )
    path = tmp_path / "trace.csv"
    write_generic(trace, path)
    return str(path)


def one_line_error(capsys, needle: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert "Traceback" not in err[0]


def test_train_on_a_trace_then_evaluate_as_json(tmp_path, trace_csv, capsys):
    store = str(tmp_path / "store")
    workload = ["--workload", f"trace:{trace_csv}"]
    assert main(["train", "--store", store, "--nodes", "4", *FAST, *workload]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--store", store, *workload, "--episode-tasks", "32",
                 "--episodes", "4", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 4 and result["nodes"] == 4
    assert result["workload"]["source"] == "trace" and result["workload"]["tasks"] == 300
    assert set(result["heuristics"]) >= {"kube_default", "most_allocated", "myopic"}
    for row in [result["policy"], *result["heuristics"].values()]:
        assert set(row) >= {"score", "cost_ms", "reject_rate"}
        assert row["cost_ms"] > 0 and 0 <= row["reject_rate"] <= 1
    best = result["heuristics"][result["best_heuristic"]]
    assert best["score"] == pytest.approx(1.0)


def test_evaluate_on_other_nodes_and_as_a_table(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["train", "--store", store, "--nodes", "4", *FAST]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--store", store, "--nodes", "5", "--episodes", "2",
                 "--episode-tasks", "32"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "on 5 nodes" in out and "kube_default" in out and "policy v1" in out


def test_adapt_takes_a_workload(tmp_path, trace_csv):
    store = str(tmp_path / "store")
    workload = ["--workload", f"trace:generic:{trace_csv}", "--episode-tasks", "32"]
    assert main(["train", "--store", store, "--nodes", "4", "--steps", "1024", "--hidden", "16",
                 *workload]) == 0  # fmt: skip
    code = main(["adapt", "--store", store, "--add", "1", "--budget", "0", "--episodes", "2",
                 "--min-retention", "0", *workload])  # fmt: skip
    assert code in (0, 1)  # promoted or rolled back: validated on the trace either way
    assert FilesystemStore(store).versions() == [1, 2]


def test_observed_workload_from_a_store(tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["train", "--store", str(store), "--nodes", "4", *FAST]) == 0
    observed = ObservedTrace()
    rng = np.random.default_rng(1)
    for i in range(200):
        created = 10.0 * i
        end = created + 1 + float(rng.exponential(80))
        record = PodRecord(created, 1.0, 1024.0, PodAttributes(), created + 1, end)
        observed.observe(f"uid-{i}", record, now=end)
    FilesystemStore(store).save_trace(observed.encode())
    capsys.readouterr()
    assert main(["evaluate", "--store", str(store), "--workload", f"observed:{store}",
                 "--episode-tasks", "32", "--episodes", "2", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["workload"]["source"] == "observed" and result["workload"]["tasks"] == 200


@pytest.mark.parametrize(
    ("workload", "needle"),
    [
        ("trace:/no/such/file.csv", "cannot read trace"),
        ("trace:parquet:/x.csv", "cannot read trace"),
        (f"trace:alibaba-gpu-v2023:{FIXTURES / 'generic.csv'}", "missing column"),
        ("spreadsheet", "unknown workload 'spreadsheet'"),
        ("observed:/no/such/store", "no checkpoint store"),
    ],
)
def test_bad_workloads_are_one_line_and_exit_code_two(tmp_path, capsys, workload, needle):
    store = str(tmp_path / "store")
    assert main(["train", "--store", store, "--nodes", "3", *FAST]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--store", store, "--workload", workload]) == 2
    one_line_error(capsys, needle)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--store", store, "--workload", workload, *FAST])
    assert exit_info.value.code == 2
    one_line_error(capsys, needle)


def test_unknown_trace_format_is_named(tmp_path, capsys):
    path = tmp_path / "odd.csv"
    path.write_text("when,size\n1,2\n")
    store = str(tmp_path / "store")
    assert main(["train", "--store", store, "--nodes", "3", *FAST]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--store", store, "--workload", f"trace:{path}"]) == 2
    one_line_error(capsys, "unknown trace format")


def test_evaluate_without_a_store_or_a_policy(tmp_path, capsys):
    assert main(["evaluate", "--store", str(tmp_path / "missing")]) == 2
    one_line_error(capsys, "no checkpoint store")
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--store", str(tmp_path / "empty")]) == 2
    one_line_error(capsys, "run `metapolicy train` first")
