import os
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest

from metapolicy_operator.metrics import Metrics

POLICY = "default/web"


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics()
    m.start(POLICY)
    m.set_phase(POLICY, "Ready")
    m.nodes.labels(POLICY).set(3)
    m.adaptation_seconds.labels("zero_padding").observe(3.2)
    m.training_seconds.observe(30)
    m.node_events.labels("added").inc()
    m.errors.labels("InvalidSpec").inc()
    return m


def test_counters_exist_at_zero_before_the_first_event(metrics):
    """increase() needs a sample before the first event, or alerts miss it."""
    text = exposition(metrics)
    line = 'metapolicy_rollbacks_total{policy="default/web",reason="retention_below_threshold"} 0.0'
    assert line in text
    assert 'metapolicy_adaptations_total{outcome="rolled_back",policy="default/web"' in text


def test_phase_is_one_hot(metrics):
    text = exposition(metrics)
    assert 'metapolicy_phase{phase="Ready",policy="default/web"} 1.0' in text
    assert 'metapolicy_phase{phase="Adapting",policy="default/web"} 0.0' in text


def test_forget_drops_every_series_of_a_deleted_policy(metrics):
    metrics.adaptations.labels(POLICY, "zero_padding", "promoted").inc()
    metrics.forget(POLICY)
    assert 'policy="default/web"' not in exposition(metrics)


def test_exposition_passes_promtool(metrics):
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI: .ci/run must install prometheus")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition(metrics), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
