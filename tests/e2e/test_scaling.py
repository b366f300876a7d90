"""Scaling scenarios against one API server and one operator process (see e2e/scenarios)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def adaptations(status: dict) -> list[dict]:
    """Trainings and adaptations: a zero-shot stage's record belongs to the adaptation after it."""
    return [r for r in status["history"] if r.get("trigger") != "zero-shot"]


def test_scale_up_3_5_12(play):
    player = play("scale-up")
    history = adaptations(player.status())
    assert [r["newNodes"] for r in history] == [3, 5, 12]
    assert [r["strategy"] for r in history] == ["initial", "zero_padding", "knowledge_distillation"]


def test_scale_down_removes_exactly_the_middle_nodes(play):
    player = play("scale-down")
    record = player.status()["lastAdaptation"]
    assert record["removedNodes"] == ["dn-3", "dn-4"]
    assert (record["oldNodes"], record["newNodes"]) == (6, 4)


def test_a_burst_within_the_settle_window_is_one_adaptation(play):
    player = play("burst")
    history = adaptations(player.status())
    assert len(history) == 2, history  # training + exactly one adaptation
    assert (history[-1]["oldNodes"], history[-1]["newNodes"]) == (4, 5)


def test_taints_make_the_policy_adapt_before_the_node_is_deleted(play):
    player = play("taint-before-delete")
    removed = [r.get("removedNodes") for r in adaptations(player.status())[1:]]
    assert removed == [["t-2"], ["t-3"]]


def test_a_rollback_drill_is_caught_and_the_active_version_keeps_serving(play):
    player = play("rollback-drill")
    status = player.status()
    drill = status["history"][-1]
    assert drill["drill"] is True and drill["outcome"] == "rolled_back"
    assert status["activeVersion"] == 2 and status["backupVersion"] == 2
    assert "RolledBack" in player.event_reasons(player.policies[-1])
