"""Fixtures for e2e tests: the API server and `metapolicy run` as processes (see e2e/).

Select with `-m e2e`, skip with `-m "not e2e"`. Set `E2E_KUBECONFIG` to run against a real
cluster instead of the emulator (docs/e2e.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from e2e.autoscaler import Autoscaler, Scenario, load_scenario
from e2e.cluster import Environment, environment, real_kubeconfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def e2e_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    """One API server and one operator for a test module; scenarios isolate themselves by
    node labels and policy names. The operator must exit cleanly (code 0) on SIGTERM."""
    workdir = tmp_path_factory.mktemp("e2e")
    with environment(workdir, kubeconfig=real_kubeconfig()) as env:
        yield env
        code = env.operator.stop()
        assert code == 0, f"operator exited with {code} on SIGTERM:\n{env.operator.log_tail()}"


@pytest.fixture
def play(e2e_env: Environment) -> Iterator[Callable[..., Autoscaler]]:
    """Play a scenario (a name or a `Scenario`); its policies and nodes are removed after the
    test, and the operator must still be running at the end."""
    players: list[Autoscaler] = []

    def run(scenario: str | Scenario, **kwargs) -> Autoscaler:
        if isinstance(scenario, str):
            scenario = load_scenario(scenario)
        player = Autoscaler(e2e_env.kube, scenario, operator=e2e_env.operator, **kwargs)
        players.append(player)
        player.play()
        process = e2e_env.operator.process
        assert process is not None and process.running(), (
            f"the operator died during scenario {scenario.name}:\n{e2e_env.operator.log_tail()}"
        )
        return player

    yield run
    for player in players:
        player.cleanup()
