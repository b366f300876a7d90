import pytest

from metapolicy.adapt import AdaptationSettings, adapt, rollback_drill
from metapolicy.cluster import TooManyNodes, resize_cluster

FAST = dict(budget_steps=0, episodes=4)


def test_shrink_with_equivalent_candidate_is_promoted(policy, workload):
    new_nodes = resize_cluster(policy.nodes, -1, remove=["node-02"])
    result = adapt(
        policy, new_nodes, AdaptationSettings(min_retention=0.0, workload=workload, **FAST)
    )
    assert result.outcome == "promoted", result.reason
    assert result.removed == ["node-02"] and result.added == []
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
    assert result.candidate_score < result.backup_masked_score


def test_impossible_retention_threshold_rolls_back(policy, workload):
    new_nodes = resize_cluster(policy.nodes, 1)
    result = adapt(
        policy, new_nodes, AdaptationSettings(min_retention=5.0, workload=workload, **FAST)
    )
    assert result.outcome == "rolled_back"
    assert "below minRetention 5.000" in result.reason
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
    record = result.to_dict()
    assert "candidate" not in record and record["added"] == ["node-06", "node-07"]


def test_worse_means_significantly_worse_on_paired_episodes():
    import numpy as np

    from metapolicy.adapt import significantly_worse

    backup = np.array([-50.0, -60.0, -55.0, -52.0])
    assert not significantly_worse(backup - np.array([0.1, -0.2, 0.15, -0.05]), backup)  # noise
    assert significantly_worse(backup - 5.0 + np.array([0.1, -0.2, 0.15, -0.05]), backup)
