"""`python -m e2e.demo`: the scaling demo on the embedded cluster, everything as processes.

Starts the KMock emulator, `metapolicy run` and `metapolicy serve` as separate processes
(connected only by a kubeconfig, as in a real cluster), applies
`manifests/examples/metapolicy-basic.yaml` with demo-sized budgets and a podSelector, and
while `e2e/scenarios/demo.yaml` plays (train, scale up, scale down, a burst, a rollback drill)
a workload generator creates the policy's pods and the scheduler driver binds them as
kube-scheduler with the MetaPolicy extender would. Prints the timeline from the policy's
status.history, then where the pods went: per node, what the policy placed next to what the
default rule alone would have, and how soon each node that joined got its first pod.
Exits non-zero if a step failed or timed out, a drill was promoted, the policy does not end
Ready and in sync with its nodes, or no pod was placed by the policy. `--fast` uses tiny
budgets (for CI; the numbers mean little).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from e2e.autoscaler import Autoscaler, load_scenario
from e2e.cluster import environment
from e2e.placement import placement
from e2e.placement import problems as placement_problems
from e2e.placement import report as placement_report
from e2e.report import timeline
from e2e.wait import E2EFailure

EXAMPLE = "manifests/examples/metapolicy-basic.yaml"
#: The example leaves budgets at the defaults (training 300000 for node-set, adaptation 50000),
#: which take far more than a few minutes on 2 cores.
DEMO_BUDGETS: dict[str, Any] = {
    "training": {"budgetSteps": 100_000},
    "adaptation": {"budgetSteps": 20_000},
}
#: The demo's pods carry this label; the policy places them (spec.podSelector).
POD_LABELS = {"app": "demo"}
PLACEMENT: dict[str, Any] = {"podSelector": {"matchLabels": POD_LABELS}}
#: The cores of the demo's first six nodes: the synthetic stream's rate is set from it.
CAPACITY_CPU = 54.0
FAST_BUDGETS: dict[str, Any] = {
    "hiddenSize": 16,
    "training": {"budgetSteps": 4096},
    "adaptation": {"budgetSteps": 1024},
    # tiny budgets: retention is noise, and 4 episodes make every interval straddle
    "validation": {"episodes": 4, "minRetention": 0.5, "onInconclusive": "promote"},
    "workload": {"episodeTasks": 32},
}


class Progress:
    """One status line while a step waits: rewritten in place on a terminal, else a line
    every `every` seconds (logs of CI runs stay short)."""

    def __init__(self, stream=sys.stderr, every: float = 15.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every
        self.shown = False
        self.last = 0.0

    def update(self, what: str, status: Mapping[str, Any], elapsed: float) -> None:
        phase = status.get("phase") or "-"
        history = len(status.get("history") or [])
        message = (status.get("message") or "")[:60]
        line = (
            f"  waiting {elapsed:5.0f}s  phase={phase:<10} nodes={status.get('currentNodes', 0)}"
            f"  adaptations={history}  {message}"
        )
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self.shown = True
        elif elapsed - self.last >= self.every or self.last > elapsed:
            self.stream.write(line + "\n")
            self.last = elapsed
        self.stream.flush()

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False
        self.last = 0.0


def check_outcome(status: Mapping[str, Any], metrics: str, policy: str) -> list[str]:
    """What is wrong with the final state: a promoted drill, not Ready, not in sync."""
    problems = []
    history = status.get("history") or []
    for record in history:
        if record.get("drill") and record.get("outcome") != "rolled_back":
            problems.append(f"the rollback drill at {record.get('startedAt')} was promoted")
    if not any(r.get("drill") for r in history):
        problems.append("no rollback drill was recorded")
    if status.get("phase") != "Ready":
        problems.append(f"final phase is {status.get('phase')!r}, not Ready")
    if status.get("eligibleNodes") != status.get("currentNodes"):
        problems.append(
            f"not in sync: {status.get('eligibleNodes')} eligible nodes, the active policy has "
            f"{status.get('currentNodes')} slots"
        )
    if f'metapolicy_policy_in_sync{{policy="{policy}"}} 1.0' not in metrics:
        problems.append(f"metapolicy_policy_in_sync for {policy} is not 1")
    return problems


def run_demo(fast: bool = False, workers: int = 1, timeout: float | None = None) -> int:
    started = datetime.now(UTC)
    clock = time.monotonic()
    scenario = load_scenario("demo")
    scenario.timeout = timeout or (240.0 if fast else scenario.timeout)
    budgets = FAST_BUDGETS if fast else DEMO_BUDGETS
    print(
        "MetaPolicy demo: the KMock emulator, `metapolicy run` and `metapolicy serve` as separate "
        "processes; a workload of pods labelled app=demo, bound by a scheduler driver that "
        "calls the server as kube-scheduler's extender"
    )
    print(
        f"applying {EXAMPLE} with {'tiny (--fast)' if fast else 'demo-sized'} budgets: "
        f"training.budgetSteps={budgets['training']['budgetSteps']}, "
        f"adaptation.budgetSteps={budgets['adaptation']['budgetSteps']}"
        + (
            ", hiddenSize=16, validation.episodes=4, validation.minRetention=0.5, "
            "workload.episodeTasks=32"
            if fast
            else ""
        )
        + ", adaptation.settleSeconds=3 (the example uses the CRD defaults)",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="metapolicy-demo-"))
    problems: list[str] = []
    progress = Progress()

    def log(line: str) -> None:
        progress.clear()
        print(line, flush=True)

    try:
        with environment(workdir, workers=workers) as env:
            print(f"operator metrics: {env.operator.metrics_url} (served while the demo runs)")
            player = Autoscaler(
                env.kube,
                scenario,
                operator=env.operator,
                policy_overrides=budgets | PLACEMENT,
                on_wait=progress.update,
                log=log,
            )
            with placement(env, workdir, labels=POD_LABELS, capacity_cpu=CAPACITY_CPU) as placed:
                print(f"placement server: {placed.server.url}/scheduler (metapolicy serve)")
                try:
                    player.play()
                except E2EFailure as failure:
                    progress.clear()
                    problems.append(str(failure))
                placed.generator.stop()  # no new pods; the report counts what was placed
                placed_text = placement_report(placed, since=_first_ready(player))
                problems += placement_problems(placed)
            policy = player.policies[-1] if player.policies else None
            status = player.status(policy) if policy else {}
            metrics = _fetch(env.operator.metrics_url)
            print("\ntimeline (from status.history):\n")
            print(timeline(status.get("history") or [], started))
            if policy:
                problems += check_outcome(status, metrics, f"{player.namespace}/{policy}")
                print()
                for line in metrics.splitlines():
                    if line.startswith(("metapolicy_policy_in_sync", "metapolicy_active_version")):
                        print(f"  {line}")
            print(f"\n{placed_text}")
            print(f"\n/metrics was served at {env.operator.metrics_url}")
            code = env.operator.stop()
            if code != 0:
                problems.append(f"the operator exited with code {code} on SIGTERM")
    except E2EFailure as failure:  # the processes did not start or stop
        problems.append(str(failure))
    elapsed = time.monotonic() - clock
    if problems:
        print(f"\nDEMO FAILED after {elapsed:.0f}s:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(f"logs kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"demo OK in {elapsed:.0f}s: every step held, the drill was rolled back, in sync, "
        "and the policy placed pods"
    )
    return 0


def _first_ready(player: Autoscaler) -> float | None:
    """When the policy first became Ready (time.time()): from then on it serves."""
    for result in player.results:
        if result.kind == "expect" and "phase='Ready'" in result.summary:
            return result.started_at.timestamp() + result.seconds
    return None


def _fetch(url: str | None) -> str:
    if not url:
        return ""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError as error:
        return f"# cannot read {url}: {error}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="tiny budgets (CI smoke run)")
    parser.add_argument("--workers", type=int, default=1, help="operator worker processes")
    parser.add_argument("--timeout", type=float, help="seconds per waiting step")
    args = parser.parse_args(argv)
    return run_demo(fast=args.fast, workers=args.workers, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
