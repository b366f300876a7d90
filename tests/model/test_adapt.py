import numpy as np
import pytest

from metapolicy.adapt import (
    AdaptationSettings,
    Cancelled,
    Validation,
    adapt,
    decide,
    refine,
    rollback_drill,
    zero_shot,
)
from metapolicy.cluster import TooManyNodes, resize_cluster
from metapolicy.evaluation import Reference
from metapolicy.record import AdaptationRecord, Outcome, Reason

FAST = dict(budget_steps=0, episodes=4)


def test_shrink_with_equivalent_candidate_is_promoted(policy, workload):
    new_nodes = resize_cluster(policy.nodes, -1, remove=["node-02"])
    result = adapt(
        policy, new_nodes, AdaptationSettings(min_retention=0.0, workload=workload, **FAST)
    )
    assert result.outcome == "promoted", result.reason
    assert result.removed == ("node-02",) and result.added == ()
    assert result.candidate.slot_names == [n.name for n in new_nodes]
    # zero-shot shrink: the candidate *is* the backup in masked mode, decision for decision
    assert result.candidate_score == pytest.approx(result.backup_masked_score)
    assert set(result.timings) == {"resize", "validate"}


def test_sabotaged_candidate_is_rolled_back(policy, workload):
    new_nodes = resize_cluster(policy.nodes, 2)
    settings = AdaptationSettings(min_retention=0.0, workload=workload, **FAST)
    result = adapt(policy, new_nodes, settings, perturb=rollback_drill)
    assert result.outcome == "rolled_back"
    assert "below the backup in masked mode" in result.reason
    assert Reason.WORSE_THAN_MASKED_BACKUP in result.record.rollback_reasons
    assert result.candidate_score < result.backup_masked_score


def test_impossible_retention_threshold_rolls_back(policy, workload):
    new_nodes = resize_cluster(policy.nodes, 1)
    result = adapt(
        policy, new_nodes, AdaptationSettings(min_retention=5.0, workload=workload, **FAST)
    )
    assert result.outcome == "rolled_back"
    assert "below minRetention 5.000" in result.reason
    assert Reason.RETENTION_BELOW_THRESHOLD in result.reason_codes
    low, high = result.retention_interval
    assert low <= result.performance_retention <= high


def test_rollback_disabled_promotes_and_says_why(policy, workload):
    settings = AdaptationSettings(min_retention=5.0, rollback=False, workload=workload, **FAST)
    result = adapt(policy, resize_cluster(policy.nodes, 1), settings)
    assert result.outcome == "promoted"
    assert result.reason.startswith("validation failed but rollback is disabled")


def test_too_many_nodes_is_a_clear_error(policy, workload):
    with pytest.raises(TooManyNodes, match="9 eligible nodes exceed maxNodes=8"):
        adapt(policy, resize_cluster(policy.nodes, 3), AdaptationSettings(max_nodes=8, **FAST))


def test_fine_tune_and_distillation_stages_are_timed(policy, workload):
    settings = AdaptationSettings(
        strategy="knowledge_distillation",
        budget_steps=1024,
        distill_steps=256,
        min_retention=0.0,
        workload=workload,
        episodes=4,
    )
    result = adapt(policy, resize_cluster(policy.nodes, 2), settings)
    assert result.strategy == "knowledge_distillation"
    assert set(result.timings) == {"resize", "distill", "fine_tune", "select", "validate"}
    assert result.adaptation_time >= sum(result.timings.values()) * 0.99
    record = result.record.to_json()
    assert "candidate" not in record and record["addedNodes"] == ["node-06", "node-07"]
    assert AdaptationRecord.from_json(record) == result.record


def test_worse_means_significantly_worse_on_paired_episodes():
    import numpy as np

    from metapolicy.adapt import significantly_worse

    backup = np.array([-50.0, -60.0, -55.0, -52.0])
    assert not significantly_worse(backup - np.array([0.1, -0.2, 0.15, -0.05]), backup)  # noise
    assert significantly_worse(backup - 5.0 + np.array([0.1, -0.2, 0.15, -0.05]), backup)


def validation(candidate, backup, low_noise=0.0):
    """A Validation from raw returns: random -100, best heuristic -50 on both clusters."""
    n = len(candidate)
    ref = Reference(random=np.full(n, -100.0), heuristics={"h": np.full(n, -50.0)})
    return Validation(
        candidate_new=np.asarray(candidate, float),
        backup_old=np.asarray(backup, float),
        backup_masked=None,
        reference_new=ref,
        reference_old=ref,
    )


@pytest.mark.parametrize(
    ("on_inconclusive", "outcome"),
    [
        ("pause", Outcome.INCONCLUSIVE),
        ("rollback", Outcome.ROLLED_BACK),
        ("promote", Outcome.PROMOTED),
    ],
)
def test_an_interval_straddling_min_retention_is_inconclusive(on_inconclusive, outcome):
    rng = np.random.default_rng(0)
    backup = np.full(16, -40.0)  # S = 1.2
    candidate = -40.0 - 6.0 + rng.normal(0, 12, 16)  # S about 1.08, wide interval
    settings = AdaptationSettings(min_retention=0.9, on_inconclusive=on_inconclusive)
    decision = decide(validation(candidate, backup), settings)
    assert decision.retention.low < 0.9 <= decision.retention.high
    assert decision.outcome is outcome
    assert Reason.RETENTION_INCONCLUSIVE in decision.codes


def test_without_rollback_an_inconclusive_candidate_is_promoted_as_a_failing_one_is():
    rng = np.random.default_rng(0)
    backup = np.full(16, -40.0)
    candidate = -40.0 - 6.0 + rng.normal(0, 12, 16)  # the straddling case above
    settings = AdaptationSettings(min_retention=0.9, rollback=False)  # onInconclusive: pause
    decision = decide(validation(candidate, backup), settings)
    assert decision.outcome is Outcome.PROMOTED
    assert {Reason.RETENTION_INCONCLUSIVE, Reason.ROLLBACK_DISABLED} <= set(decision.codes)
    failing = decide(validation(backup - 40, backup), settings)
    assert failing.outcome is Outcome.PROMOTED and Reason.ROLLBACK_DISABLED in failing.codes


def test_clearly_above_and_clearly_below():
    backup = np.full(16, -40.0)
    settings = AdaptationSettings(min_retention=0.9)
    assert decide(validation(backup, backup), settings).outcome is Outcome.PROMOTED
    assert decide(validation(backup - 40, backup), settings).outcome is Outcome.ROLLED_BACK


def test_serve_first_stores_the_zero_shot_decision_before_fine_tuning(policy, workload):
    settings = AdaptationSettings(
        budget_steps=1024, episodes=4, min_retention=0.0, workload=workload
    )
    seen = []
    result = adapt(policy, resize_cluster(policy.nodes, 1), settings, on_zero_shot=seen.append)
    assert seen == [result.zero_shot] and result.zero_shot.promoted
    assert set(result.zero_shot.record.timings) == {"resize", "validate"}
    assert result.final is not result.zero_shot
    # the zero-shot candidate serves; the fine-tuned one replaces it only if better
    assert result.final.record.outcome in (Outcome.PROMOTED, Outcome.KEPT_ZERO_SHOT)
    better = Reason.BETTER_THAN_ZERO_SHOT in result.final.record.reason_codes
    assert better == (result.final.record.outcome is Outcome.PROMOTED)
    assert result.serving is (result.final.candidate if better else result.zero_shot.candidate)
    # the same paired episodes: the backup's returns are reused, not replayed
    assert result.final.validation.backup_old is result.zero_shot.validation.backup_old


def test_a_drill_fails_both_stages(policy, workload):
    settings = AdaptationSettings(
        budget_steps=512, episodes=4, min_retention=0.0, workload=workload
    )
    result = adapt(policy, resize_cluster(policy.nodes, 1), settings, perturb=rollback_drill)
    assert result.zero_shot.record.outcome is Outcome.ROLLED_BACK
    assert result.final.record.outcome is Outcome.ROLLED_BACK
    assert result.serving is None and not result.promoted


def test_a_fine_tune_can_be_cancelled(policy, workload):
    settings = AdaptationSettings(
        budget_steps=4096, episodes=4, min_retention=0.0, workload=workload
    )
    first = zero_shot(policy, resize_cluster(policy.nodes, 1), settings)
    with pytest.raises(Cancelled):
        refine(policy, first, settings, should_stop=lambda: True)
