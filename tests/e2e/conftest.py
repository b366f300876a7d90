"""Fixtures for e2e tests: the API server and `metapolicy run` as processes (see e2e/).

Select with `-m e2e`, skip with `-m "not e2e"`. Set `E2E_KUBECONFIG` to run against a real
cluster instead of the emulator (docs/e2e.md).
"""

from __future__ import annotations

import http.server
import json
import threading
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


# ----- a stand-in extender (test machinery only) -----------------------------------------------


class StandInExtender:
    """A tiny kube-scheduler extender over HTTP, to test the scheduler driver without the real
    server: `filter` keeps every node (or what `keep` allows), `prioritize` gives `favourite`
    (or, without one, the alphabetically last candidate) 10 and every other node 0.

    `mode` makes it misbehave: "error" (HTTP 500), "hang" (answers only after `release` is set,
    or 10 s), "filter-error" (an ExtenderFilterResult with `Error` set), "neutral" (every node
    5, as a shadow-mode policy answers). `requests` keeps (verb, decoded body) of every call.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.favourite: str | None = None
        self.keep: Callable[[str], bool] = lambda name: True
        self.requests: list[tuple[str, dict]] = []
        self.release = threading.Event()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                verb = self.path.rsplit("/", 1)[-1]
                stand_in.requests.append((verb, body))
                if stand_in.mode == "hang":
                    stand_in.release.wait(10)
                if stand_in.mode == "error":
                    self.send_response(500)
                    self.end_headers()
                    return
                answer = stand_in.answer(verb, body)
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, verb: str, body: dict) -> object:
        names = body.get("NodeNames")
        if names is None:  # not node-cache capable: full Node objects
            names = [n["metadata"]["name"] for n in (body.get("Nodes") or {}).get("items") or []]
        if verb == "filter":
            if self.mode == "filter-error":
                return {"NodeNames": None, "FailedNodes": {}, "Error": "stand-in: broken"}
            kept = [n for n in names if self.keep(n)]
            failed = {n: "stand-in: not kept" for n in names if n not in kept}
            return {"Nodes": None, "NodeNames": kept, "FailedNodes": failed,
                    "FailedAndUnresolvableNodes": {}, "Error": ""}  # fmt: skip
        if self.mode == "neutral":
            return [{"Host": n, "Score": 5} for n in names]
        top = self.favourite if self.favourite in names else max(names)
        return [{"Host": n, "Score": 10 if n == top else 0} for n in names]

    def verbs(self) -> list[str]:
        return [verb for verb, _ in self.requests]

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.fixture
def stand_in() -> Iterator[StandInExtender]:
    extender = StandInExtender()
    yield extender
    extender.stop()
