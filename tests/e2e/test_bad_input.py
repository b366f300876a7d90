"""Bad input gives a clear status, an Event, and keeps what serves (see e2e/scenarios)."""

from __future__ import annotations

import time

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
    """The harness itself must be able to fail: phase Failed can never become Ready, so the
    expect step gives up at once instead of waiting for its timeout."""
    if e2e_env.kube.real:
        pytest.skip("a real API server rejects this spec at admission")
    scenario = Scenario(
        name="harness-check",
        timeout=60,
        steps=[
            {"apply-policy": {"name": "e2e-harness", "spec": {"hiddenSize": 4}, "invalid": True}},
            {"expect": {"phase": "Ready"}},
        ],
    )
    started = time.monotonic()
    with pytest.raises(E2EFailure) as failure:
        play(scenario)
    assert time.monotonic() - started < 30  # given up as hopeless, not timed out
    message = str(failure.value)
    assert "step 2 (expect)" in message and "cannot happen any more" in message
    assert "phase='Failed'" in message and "hiddenSize" in message
