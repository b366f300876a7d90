"""The e2e harness without processes: scenario files, expectations, the demo's verdict."""

from __future__ import annotations

import pytest

from e2e.autoscaler import SCENARIOS, deep_merge, load_scenario, mismatches
from e2e.demo import check_outcome
from e2e.report import event_name, timeline

TRAIN = {"strategy": "initial", "oldNodes": 0, "newNodes": 3, "outcome": "promoted"}
ADAPT = {
    "strategy": "zero_padding",
    "oldNodes": 3,
    "newNodes": 5,
    "addedNodes": ["a", "b"],
    "outcome": "promoted",
    "performanceRetention": 0.97,
    "retentionInterval": [0.9, 1.02],
    "startedAt": "2026-01-01T00:01:05Z",
}


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_scenario_file_loads(path):
    scenario = load_scenario(path)
    assert scenario.steps and scenario.name


def test_a_typo_in_a_scenario_fails_before_anything_runs(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("name: typo\nsteps:\n  - expect: {phase: Ready, histroyLength: 1}\n")
    with pytest.raises(ValueError, match="histroyLength"):
        load_scenario(path)
    path.write_text("name: typo\nsteps:\n  - remove: [a]\n")
    with pytest.raises(ValueError, match="unknown step 'remove'"):
        load_scenario(path)


def test_an_extra_adaptation_is_hopeless_not_a_wait():
    status = {"phase": "Ready", "history": [TRAIN, ADAPT, ADAPT]}
    problems, hopeless = mismatches({"historyLength": 2}, status)
    assert hopeless and problems == ["historyLength=3 (want 2)"]


def test_a_wrong_newest_record_is_hopeless_once_the_count_is_reached():
    status = {"phase": "Ready", "history": [TRAIN, ADAPT]}
    _, hopeless = mismatches({"historyLength": 2, "lastOutcome": "rolled_back"}, status)
    assert hopeless
    problems, hopeless = mismatches({"historyLength": 3, "lastOutcome": "rolled_back"}, status)
    assert problems and not hopeless  # the third record may still come


def test_node_lists_compare_as_sets_and_conditions_by_attribute():
    status = {
        "nodes": ["b", "a"],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving"}],
    }
    assert mismatches({"nodes": ["a", "b"], "conditions": {"Ready": "True"}}, status) == ([], False)
    problems, _ = mismatches({"conditions": {"Ready": {"reason": "InSync"}}}, status)
    assert problems == ["condition Ready.reason='Serving' (want 'InSync')"]


def test_deep_merge_keeps_what_the_patch_does_not_mention():
    base = {"training": {"budgetSteps": 1, "seed": 3}}
    merged = deep_merge(base, {"training": {"budgetSteps": 2}})
    assert merged == {"training": {"budgetSteps": 2, "seed": 3}}
    assert base["training"]["budgetSteps"] == 1


def test_the_timeline_shows_each_record_with_its_event():
    assert event_name(TRAIN) == "train"
    assert event_name(ADAPT) == "scale up"
    assert event_name(ADAPT | {"drill": True}) == "drill"
    assert event_name(ADAPT | {"trigger": "zero-shot"}) == "zero-shot scale up"
    assert event_name(ADAPT | {"drill": True, "trigger": "zero-shot"}) == "zero-shot drill"
    text = timeline([TRAIN | {"startedAt": "2026-01-01T00:00:00Z"}, ADAPT])
    assert "+01:05  scale up" in text and "0.970 [0.90, 1.02]" in text and "3 -> 5" in text


def test_the_demo_fails_on_a_promoted_drill_or_a_policy_out_of_sync():
    ok = {"phase": "Ready", "eligibleNodes": 5, "currentNodes": 5}
    drill = ADAPT | {"drill": True, "outcome": "rolled_back"}
    in_sync = 'metapolicy_policy_in_sync{policy="ns/p"} 1.0'
    assert check_outcome(ok | {"history": [TRAIN, drill]}, in_sync, "ns/p") == []
    promoted = ok | {"history": [TRAIN, drill | {"outcome": "promoted"}]}
    assert any("promoted" in p for p in check_outcome(promoted, in_sync, "ns/p"))
    behind = ok | {"eligibleNodes": 6, "history": [TRAIN, drill]}
    assert len(check_outcome(behind, in_sync.replace("1.0", "0.0"), "ns/p")) == 2
