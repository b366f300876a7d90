from datetime import UTC, datetime, timedelta

from metapolicy.adapt import AdaptationSettings
from metapolicy_operator.planning import (
    Plan,
    attempt_settings,
    failed_attempts,
    node_set_hash,
    plan,
    undecided,
)
from metapolicy_operator.spec import parse_spec


def test_each_retry_fine_tunes_with_a_seed_of_its_own():
    base = AdaptationSettings(seed=7, budget_steps=1234)
    first = attempt_settings(base, Plan("adapt", "Adapting", "NodeSetChanged", "", "zero_padding"))
    retry = Plan("adapt", "Adapting", "Retry", "", "attention_based", attempt=3, trigger="retry")
    third = attempt_settings(base, retry)
    assert (first.strategy, first.seed) == ("zero_padding", 7)
    assert (third.strategy, third.seed) == ("attention_based", 9)
    assert third.budget_steps == 1234  # everything else as the spec says


# ----- plans from the store's records -----------------------------------------------------------

OLD, NEW = ["a", "b"], ["a", "b", "c"]
TARGET = node_set_hash(NEW)
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def record(outcome, trigger="nodes", target=TARGET, strategy="zero_padding", **extra):
    finished = (NOW - timedelta(seconds=extra.pop("ago", 60))).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "outcome": outcome,
        "trigger": trigger,
        "nodeSetHash": target,
        "strategy": strategy,
        "finishedAt": finished,
        **extra,
    }


def test_attempts_count_final_records_only_and_skip_zero_shot_stages():
    records = [
        record("promoted", "initial", node_set_hash(OLD)),
        record("rolled_back", "zero-shot"),
        record("rolled_back"),
        record("cancelled"),
        record("rolled_back", "zero-shot", strategy="weight_interpolation"),
        record("rolled_back", "retry", strategy="weight_interpolation"),
    ]
    assert [r["strategy"] for r in failed_attempts(records, TARGET)] == [
        "weight_interpolation",
        "zero_padding",
    ]
    assert failed_attempts([*records, record("promoted")], TARGET) == []
    assert failed_attempts([*records, record("promoted", target="other")], TARGET) == []


def test_after_a_rollback_the_retry_escalates_once_the_backoff_passed():
    spec = parse_spec({"adaptation": {"backoffSeconds": 30}})
    records = [record("rolled_back", "zero-shot", ago=40), record("rolled_back", ago=40)]
    retry = plan(spec, OLD, NEW, records, now=NOW)
    assert (retry.action, retry.strategy, retry.attempt) == ("adapt", "weight_interpolation", 2)
    records = [record("rolled_back", ago=10)]
    assert plan(spec, OLD, NEW, records, now=NOW).reason == "BackingOff"


def test_an_inconclusive_candidate_waits_until_promoted_or_aborted():
    spec = parse_spec({})
    waiting = [record("inconclusive", version=4)]
    assert undecided(waiting, TARGET)["version"] == 4
    decision = plan(spec, OLD, NEW, waiting, now=NOW)
    assert (decision.action, decision.phase, decision.reason) == ("wait", "Paused", "Inconclusive")
    aborted = [*waiting, record("aborted", "abort", version=4, ago=5)]
    assert undecided(aborted, TARGET) is None
    # an abort is a failed attempt: the next one escalates
    assert len(failed_attempts(aborted, TARGET)) == 1


def test_paused_starts_nothing_but_reports_limits_first():
    paused = parse_spec({"paused": True, "maxNodes": 2})
    assert plan(paused, OLD, NEW, [], now=NOW).reason == "TooManyNodes"
    paused = parse_spec({"paused": True})
    for active in (None, OLD):
        decision = plan(paused, active, NEW, [], {"strategy": "auto"}, now=NOW)
        assert (decision.action, decision.phase) == ("paused", "Paused")
