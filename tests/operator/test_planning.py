from metapolicy.adapt import AdaptationSettings
from metapolicy_operator.planning import Plan, attempt_settings


def test_each_retry_fine_tunes_with_a_seed_of_its_own():
    base = AdaptationSettings(seed=7, budget_steps=1234)
    first = attempt_settings(base, Plan("adapt", "Adapting", "NodeSetChanged", "", "zero_padding"))
    retry = Plan("adapt", "Adapting", "Retry", "", "attention_based", attempt=3, trigger="retry")
    third = attempt_settings(base, retry)
    assert (first.strategy, first.seed) == ("zero_padding", 7)
    assert (third.strategy, third.seed) == ("attention_based", 9)
    assert third.budget_steps == 1234  # everything else as the spec says
