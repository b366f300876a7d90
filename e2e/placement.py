"""The placement half of the demo: pods arrive, `metapolicy serve` scores them, the scheduler
driver binds them, and at the end a report of where they went.

`placement()` starts the server as a process, the scheduler driver (playing kube-scheduler
with the shipped extender configuration) and a workload generator (a synthetic task stream
whose pods the policy's podSelector matches); `report()` prints, per node, the pods and cpu
placed there next to what kube-scheduler's default rule alone would have placed over the
same arrivals and departures (`e2e.counterfactual`), who decided each placement, and how
soon each node that joined while the policy served got its first pod.
"""

from __future__ import annotations

import contextlib
import statistics
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from e2e.cluster import Environment
from e2e.extender import shipped_extender
from e2e.scheduler import Decision, SchedulerDriver, scheduling
from e2e.serve import Server
from e2e.workload import WorkloadGenerator, draw_tasks
from metapolicy.traces import SyntheticTasks
from metapolicy.workload import WorkloadSpec

#: The extender's timeout here: the shipped 100 ms is for a server with cores of its own;
#: on a shared 2-core machine a training process competes with it (see e2e.serve).
HTTP_TIMEOUT_S = 5.0


@dataclass
class Placement:
    server: Server
    driver: SchedulerDriver
    generator: WorkloadGenerator


@contextlib.contextmanager
def placement(
    env: Environment,
    workdir: Path,
    *,
    labels: Mapping[str, str],
    capacity_cpu: float,
    load: float = 0.6,
    compression: float = 1.0,
    tasks: int = 5000,
    seed: int = 0,
) -> Iterator[Placement]:
    """Server, driver and a task stream (`tasks` long: it is stopped, not finished) for the
    block; everything stops on exit, and the stream's pods are deleted."""
    server = Server(env.kube.kubeconfig, workdir)
    server.start()
    try:
        extender = replace(shipped_extender().at(server.url), http_timeout_s=HTTP_TIMEOUT_S)
        source = SyntheticTasks(WorkloadSpec(load=load, episode_tasks=tasks))
        stream = draw_tasks(source, seed=seed, capacity_cpu=capacity_cpu)
        with scheduling(env.kube, extender, seed=seed) as driver:
            generator = WorkloadGenerator(
                env.kube, stream, name="demo", labels=labels, compression=compression
            )
            generator.start()
            try:
                yield Placement(server, driver, generator)
            finally:
                generator.stop()
    finally:
        server.stop()


def _who(decision: Decision) -> str:
    if decision.prioritize_error or decision.filter_error:
        return "the default rule (extender unreachable)"
    if decision.outcome == "policy":
        return "the policy"
    if decision.outcome == "fallback":
        return "the server's fallback (the default rule)"
    if decision.extender_scores is None:
        return "the default rule (one node left)"
    return f"the default rule ({decision.outcome or 'neutral'} scores)"


def first_pods(
    decisions: list[Decision], joined: Mapping[str, float], since: float
) -> dict[str, float | None]:
    """Seconds from a node's join to its first bound pod, for the nodes that joined after
    `since` (None: no pod yet)."""
    first: dict[str, float] = {}
    for d in decisions:
        if d.node and d.bound_at is not None:
            first[d.node] = min(first.get(d.node, d.bound_at), d.bound_at)
    return {
        node: (first[node] - at if node in first else None)
        for node, at in sorted(joined.items(), key=lambda item: item[1])
        if at >= since
    }


def report(run: Placement, since: float | None = None) -> str:
    """The placement tables (see the module's docstring); `since`: when the policy began to
    serve (time.time()), for the join times."""
    driver = run.driver
    bound = driver.bound()
    lines = [f"placement: {len(bound)} pods bound by the scheduler driver through metapolicy serve"]
    for who, count in Counter(_who(d) for d in bound).most_common():
        lines.append(f"  {count:5d}  decided by {who}")
    fallbacks = {
        reason: run.server.metric("metapolicy_serve_fallbacks_total", reason=reason)
        for reason in ("no_active_version", "over_budget", "no_slot", "checkpoint_unreadable")
    }
    if any(fallbacks.values()):
        shown = ", ".join(f"{r} {int(n)}" for r, n in fallbacks.items() if n)
        lines.append(f"         server fallbacks by reason: {shown}")
    seconds = sorted(d.extender_seconds for d in bound if d.extender_scores is not None)
    if seconds:
        p99 = seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))]
        lines.append(
            f"         extender calls (filter + prioritize, HTTP, seen by the driver): "
            f"p50 {statistics.median(seconds) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
        )
    placed: dict[str, list[float]] = {}
    for d in bound:
        placed.setdefault(d.node or "", []).append(d.cpu)
    shadow = driver.counterfactual.placed
    nodes = sorted(set(placed) | set(shadow))
    lines += [
        "",
        "per node, over the whole run:   placed (policy and server)   default rule alone",
        "node          joined            pods    cpu                 pods    cpu",
    ]
    start = min(driver.joined.values(), default=0.0)
    for node in nodes:
        mine, other = placed.get(node, []), shadow.get(node)
        joined = driver.joined.get(node)
        when = f"+{joined - start:5.1f}s" if joined is not None else "   -   "
        lines.append(
            f"{node:<13} {when:<17} {len(mine):5d} {sum(mine):7.1f}               "
            f"{other.pods if other else 0:5d} {other.cpu if other else 0.0:7.1f}"
        )
    if driver.counterfactual.unplaced:
        lines.append(f"the default rule alone found no room for {driver.counterfactual.unplaced}")
    if since is None:  # when the policy first placed a pod
        since = min((d.at for d in bound if d.outcome == "policy"), default=None)
    if since is not None:
        firsts = first_pods(bound, driver.joined, since)
        if firsts:
            lines += ["", "nodes that joined while the policy served: join -> first pod bound"]
            for node, delay in firsts.items():
                lines.append(
                    f"  {node:<13} " + (f"{delay:5.1f} s" if delay is not None else "none yet")
                )
    return "\n".join(lines)


def problems(run: Placement) -> list[str]:
    """What is wrong with the placement half: errors, or the policy never deciding."""
    found = [f"scheduler driver: {e}" for e in run.driver.errors]
    found += [f"kubelet: {e}" for e in (run.driver.kubelet.errors if run.driver.kubelet else [])]
    found += [f"workload: {e}" for e in run.generator.errors]
    if not any(d.outcome == "policy" for d in run.driver.bound()):
        found.append("no pod was placed by the policy")
    return found
