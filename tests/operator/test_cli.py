from metapolicy.store import FilesystemStore
from metapolicy_operator.cli import main


def test_train_adapt_inspect_round_trip(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert (
        main(["train", "--store", store, "--nodes", "5", "--steps", "1024", "--hidden", "16"]) == 0
    )
    assert FilesystemStore(store).active() == 1
    code = main(
        ["adapt", "--store", store, "--remove", "node-02", "--budget", "0", "--episodes", "4",
         "--min-retention", "0"]
    )  # fmt: skip
    assert code == 0  # promoted
    assert FilesystemStore(store).active() == 2
    capsys.readouterr()
    assert main(["inspect", "--store", store]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith(" v1") and listing[1].startswith("*v2")
    assert "node-02" in listing[0] and "node-02" not in listing[1]


def test_rolled_back_adaptation_exits_one_and_keeps_the_active_version(tmp_path):
    store = str(tmp_path / "store")
    main(["train", "--store", store, "--nodes", "4", "--steps", "1024", "--hidden", "16"])
    code = main(
        ["adapt", "--store", store, "--add", "1", "--budget", "0", "--episodes", "4",
         "--min-retention", "9"]
    )  # fmt: skip
    assert code == 1
    assert FilesystemStore(store).active() == 1
    assert FilesystemStore(store).versions() == [1, 2]  # the candidate is kept for inspection


def test_adapt_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["adapt", "--store", str(tmp_path), "--add", "1"]) == 2
    assert "run `metapolicy train` first" in capsys.readouterr().err


def test_strategies_prints_the_auto_choice(capsys):
    assert main(["strategies", "--old", "8", "--new", "16"]) == 0
    assert "8 -> 16 nodes: knowledge_distillation" in capsys.readouterr().out


def test_offline_demo_runs_and_catches_the_drill(capsys):
    assert main(["demo", "--fast"]) == 0
    out = capsys.readouterr().out
    assert "drill" in out and "rolled_back" in out
