"""`metapolicy train` / `adapt` with --max-nodes and --device, and `adapt --json`."""

import json

import pytest
import torch

from metapolicy.checkpoint import policy_from_checkpoint
from metapolicy.store import FilesystemStore
from metapolicy_operator.cli import main

TINY = ["--steps", "1024", "--hidden", "16", "--episode-tasks", "32"]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_train_refuses_more_nodes_than_max_nodes_and_names_the_flag(tmp_path, capsys):
    assert main(["train", "--store", str(tmp_path), "--nodes", "30", *TINY]) == 2
    err = capsys.readouterr().err
    assert "30 eligible nodes exceed maxNodes=20" in err and "--max-nodes" in err
    assert not FilesystemStore(str(tmp_path)).versions()


def test_train_on_a_big_cluster_with_max_nodes(tmp_path, capsys):
    store = str(tmp_path / "store")
    args = ["train", "--store", store, "--nodes", "40", "--max-nodes", "40", *TINY]
    assert main([*args, "--device", "cpu"]) == 0
    assert "on 40 nodes" in capsys.readouterr().out
    policy = policy_from_checkpoint(FilesystemStore(store).load(1))
    assert policy.size == 40 and policy.device == torch.device("cpu")


def test_slot_mlp_beyond_its_limit_is_a_clear_error(tmp_path, capsys):
    args = ["train", "--store", str(tmp_path), "--nodes", "300", "--max-nodes", "300"]
    assert main([*args, "--architecture", "slot-mlp", *TINY]) == 2
    assert "the 256 a slot-mlp policy supports" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_one_line_and_exit_two(tmp_path, capsys, no_gpu):
    assert main(["train", "--store", str(tmp_path), "--device", "cuda", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metapolicy train: error: training.device=cuda, but torch sees no")
    assert len(err.splitlines()) == 1


def test_adapt_json_has_time_to_serve_and_adaptation_time(tmp_path, capsys, no_gpu):
    store = str(tmp_path / "store")
    assert main(["train", "--store", store, "--nodes", "4", *TINY]) == 0
    capsys.readouterr()
    code = main(
        ["adapt", "--store", store, "--add", "1", "--budget", "1024", "--episodes", "4",
         "--min-retention", "0", "--episode-tasks", "32", "--max-nodes", "5", "--device", "auto",
         "--json"]
    )  # fmt: skip
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["new_nodes"] == 5 and record["adaptation_time"] > 0
    assert record["time_to_serve"] is not None and record["time_to_serve"] > 0
    assert record["time_to_serve"] <= record["adaptation_time"] + 5  # the zero-shot served first


def test_adapt_refuses_growing_past_max_nodes(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["train", "--store", store, "--nodes", "4", *TINY]) == 0
    capsys.readouterr()
    assert main(["adapt", "--store", store, "--add", "2", "--max-nodes", "5"]) == 2
    assert "6 eligible nodes exceed maxNodes=5" in capsys.readouterr().err
