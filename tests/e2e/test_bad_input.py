"""Bad input gives a clear status, an Event, and keeps what serves (see e2e/scenarios)."""

from __future__ import annotations

import pytest

from e2e.autoscaler import Scenario
from e2e.wait import E2EFailure

pytestmark = pytest.mark.e2e


def test_an_invalid_spec_fails_with_a_condition_and_an_event(play):
    player = play("bad-spec")
    if player.rejected:  # a real API server: admission rejected it, which is also correct
        return
    status = player.status()
    assert "architecture" in status["message"]


def test_a_malformed_latency_annotation_sets_the_node_data_condition(play):
    play("bad-node-data")


def test_more_nodes_than_max_nodes_degrades_without_touching_the_active_version(play):
    player = play("too-many-nodes")
    assert player.status()["nodes"] == ["mx-1", "mx-2", "mx-3"]


def test_a_wrong_expectation_fails_fast_and_says_what_it_saw(e2e_env, play):
    """The harness itself must be able to fail: once a policy has trained, a history without
    any record can never come back, so the expect step gives up at once instead of waiting
    for its timeout. (An invalid spec no longer gets this far: admission refuses it.)"""
    scenario = Scenario(
        name="harness-check",
        timeout=60,
        steps=[
            {
                "apply-policy": {
                    "name": "e2e-harness",
                    "spec": {
                        "hiddenSize": 8,
                        "maxNodes": 4,
                        "training": {"budgetSteps": 1024},
                        "workload": {"episodeTasks": 16},
                    },
                }
            },
            {"add": [{"name": "hc-1", "cpu": "4", "memory": "16Gi", "latencyMs": 5}]},
            {"expect": {"phase": "Ready", "historyLength": 1}},
            {"expect": {"historyLength": 0}},
        ],
    )
    with pytest.raises(E2EFailure) as failure:
        play(scenario)
    message = str(failure.value)
    assert "step 4 (expect)" in message and "cannot happen any more" in message
    assert "historyLength=1 (want 0)" in message
