"""A simulated autoscaler that plays scenario files against a cluster and checks the operator.

A scenario (`e2e/scenarios/*.yaml`) is a list of steps, each a mapping with one key:

    add: [{name, cpu, memory, latencyMs, labels, ready}]    create Nodes
    cordon: [names] / uncordon: [names]                      spec.unschedulable
    taint: {names, kind: cluster-autoscaler|karpenter|karpenter-v0}   removal taints
    delete: [names]                                          delete Nodes (waits until gone)
    flap: {name, times, pace}                                Ready False/True, ends True
    set-latency: {name, latencyMs}                           rewrite the latency annotation
    burst: {pace, changes: [node steps]}                     many changes, `pace` s apart
    apply-policy: {name, file, spec, invalid}                create a MetaPolicy
    annotate-policy: {policy, request: {strategy, reason, drill}}   adapt request / drill
    expect: {policy, timeout, phase, nodes, ...}             wait for the MetaPolicy status
                                                             (phase Ready: and in sync, per
                                                             the operator's /metrics)
    kill-operator: {whilePhase}                              SIGKILL the operator's group
    start-operator: {}                                       start it again

Every step that waits polls a condition with a bound (the scenario's `timeout`, or the
step's); only the pacing inside `burst` and `flap` sleeps, on purpose. Nodes get the label
`e2e.metapolicy.dev/scenario: <scenario name>` and, with `isolate: true` (the default), every
policy selects only them, so scenarios can share one operator and run on a real cluster
without touching its real nodes.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from prometheus_client.parser import text_string_to_metric_families

from e2e.cluster import GROUP, PLURAL, ROOT, VERSION, Kube, Operator
from e2e.nodes import REMOVAL_TAINTS, SCENARIO_LABEL, Nodes
from e2e.wait import E2EFailure, poll

KIND = "MetaPolicy"
ADAPT_REQUEST = "metapolicy.dev/adapt-request"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"

NODE_STEPS = {"add", "cordon", "uncordon", "taint", "delete", "flap", "set-latency"}
STEPS = NODE_STEPS | {
    "burst",
    "apply-policy",
    "annotate-policy",
    "expect",
    "kill-operator",
    "start-operator",
}

# expect keys read from status (lists compared as sets of names, sorted)
_LISTS = {"nodes", "lastAdded", "lastRemoved"}
_RECORD = {  # fields of the newest history record: final once historyLength is reached
    "lastOutcome": "outcome",
    "lastStrategy": "strategy",
    "lastTrigger": "trigger",
    "lastDrill": "drill",
    "lastAdded": "addedNodes",
    "lastRemoved": "removedNodes",
}
_STATUS = {"phase", "currentNodes", "eligibleNodes", "activeVersion", "backupVersion"}
_SPECIAL = {"historyLength", "nodes", "conditions", "adaptRequestState", "events", "nodeObjects"}
EXPECT_KEYS = _STATUS | _SPECIAL | set(_RECORD) | {"policy", "timeout"}


# ----- scenarios ------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    steps: list[dict[str, Any]]
    description: str = ""
    timeout: float = 120.0  # default bound of every waiting step
    isolate: bool = True
    path: Path | None = None


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A scenario by name (`e2e/scenarios/<name>.yaml`) or path, checked before anything runs,
    so a typo fails at once instead of minutes into a run."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIOS / f"{name_or_path}.yaml"
    data = yaml.safe_load(path.read_text())
    scenario = Scenario(
        name=data["name"],
        steps=list(data.get("steps") or []),
        description=data.get("description", ""),
        timeout=float(data.get("timeout", 120)),
        isolate=bool(data.get("isolate", True)),
        path=path,
    )
    for index, step in enumerate(scenario.steps, 1):
        _check_step(step, f"{path.name} step {index}", STEPS)
    return scenario


def _check_step(step: Any, where: str, allowed: set[str]) -> None:
    if not isinstance(step, Mapping) or len(step) != 1:
        raise ValueError(f"{where}: a step is a mapping with exactly one key, got {step!r}")
    kind, args = next(iter(step.items()))
    if kind not in allowed:
        raise ValueError(f"{where}: unknown step {kind!r}; one of {', '.join(sorted(allowed))}")
    if kind == "expect" and (unknown := set(args or {}) - EXPECT_KEYS):
        raise ValueError(f"{where}: unknown expect keys {sorted(unknown)}")
    if kind == "taint" and args.get("kind") not in REMOVAL_TAINTS:
        raise ValueError(f"{where}: taint kind must be one of {', '.join(REMOVAL_TAINTS)}")
    if kind == "burst":
        for i, change in enumerate(args.get("changes") or [], 1):
            _check_step(change, f"{where} change {i}", NODE_STEPS)


def deep_merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`patch` over `base`, recursively for mappings (a JSON merge patch without deletes)."""
    out = copy.deepcopy(dict(base))
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ----- expectations ---------------------------------------------------------------------------


def _last(status: Mapping[str, Any], key: str) -> Any:
    history = status.get("history") or []
    return history[-1].get(key) if history else None


def observe(key: str, status: Mapping[str, Any]) -> Any:
    """The value an `expect` key compares against, from a MetaPolicy status.

    `historyLength` counts the records that end a training or an adaptation: the record of a
    zero-shot candidate served before its fine-tune belongs to the adaptation that follows.
    """
    if key == "historyLength":
        history = status.get("history") or []
        return sum(1 for record in history if record.get("trigger") != "zero-shot")
    if key == "nodes":
        return sorted(status.get("nodes") or [])
    if key == "lastDrill":
        return bool(_last(status, "drill"))
    if key in _RECORD:
        value = _last(status, _RECORD[key])
        return sorted(value or []) if key in _LISTS else value
    return status.get(key)


def _want(key: str, value: Any) -> Any:
    return sorted(value) if key in _LISTS else value


def _matches(key: str, got: Any, value: Any) -> bool:
    """A list for a scalar key means any of its values (serve first: an adaptation ends with
    its fine-tuned candidate promoted, or with the zero-shot one kept, as one more version)."""
    if isinstance(value, list) and key not in _LISTS:
        return got in value
    return got == _want(key, value)


def _conditions_ok(want: Mapping[str, Any], status: Mapping[str, Any]) -> list[str]:
    have = {c.get("type"): c for c in status.get("conditions") or []}
    problems = []
    for type_, expected in want.items():
        expected = expected if isinstance(expected, Mapping) else {"status": expected}
        got = have.get(type_, {})
        for attr, value in expected.items():
            if str(got.get(attr)) != str(value):
                problems.append(f"condition {type_}.{attr}={got.get(attr)!r} (want {value!r})")
    return problems


def mismatches(want: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[list[str], bool]:
    """What differs from `want` (status keys only), and whether waiting can still help.

    Hopeless: more history records than wanted (an extra adaptation happened), the wanted
    number reached with the wrong newest record (records never change once written), phase
    Failed when it was not wanted, or a drill record with the wrong outcome.
    """
    problems, hopeless = [], False
    for key, value in want.items():
        if key in ("policy", "timeout", "events", "nodeObjects"):
            continue
        if key == "conditions":
            problems += _conditions_ok(value, status)
            continue
        if key == "adaptRequestState":
            state = (status.get("adaptRequest") or {}).get("state") or ""
            if not state.startswith(value):
                problems.append(f"adaptRequest.state={state!r} (want {value!r}...)")
            continue
        got = observe(key, status)
        if not _matches(key, got, value):
            problems.append(f"{key}={got!r} (want {_want(key, value)!r})")
    history = observe("historyLength", status)
    if "historyLength" in want:
        final = history == want["historyLength"]
        hopeless |= history > want["historyLength"]
        hopeless |= final and any(p.split("=")[0] in _RECORD for p in problems)
    hopeless |= status.get("phase") == "Failed" and want.get("phase", "Failed") != "Failed"
    if want.get("lastDrill") and observe("lastDrill", status) and "lastOutcome" in want:
        # a drill is not retried
        hopeless |= not _matches("lastOutcome", observe("lastOutcome", status), want["lastOutcome"])
    return problems, hopeless


# ----- the player -----------------------------------------------------------------------------


@dataclass
class StepResult:
    index: int
    kind: str
    summary: str
    seconds: float
    started_at: datetime  # wall clock (UTC), comparable with status timestamps


@dataclass
class Autoscaler:
    """Plays one scenario; `cleanup()` removes its policies and nodes afterwards.

    `policy_overrides` is merged into every applied spec last (the demo's budgets);
    `on_wait(what, status, elapsed)` is called on every poll of a waiting step (progress).
    """

    kube: Kube
    scenario: Scenario
    namespace: str = "default"
    operator: Operator | None = None
    policy_overrides: Mapping[str, Any] = field(default_factory=dict)
    on_wait: Callable[[str, Mapping[str, Any], float], None] | None = None
    log: Callable[[str], None] = print
    results: list[StepResult] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    rejected: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.nodes = Nodes(self.kube, self.scenario.name)

    # ----- running ---------------------------------------------------------------------------
    def play(self) -> list[StepResult]:
        for index, step in enumerate(self.scenario.steps, 1):
            kind, args = next(iter(step.items()))
            started, started_at = time.monotonic(), datetime.now(UTC)
            try:
                summary = getattr(self, "_" + kind.replace("-", "_"))(args or {})
            except E2EFailure as failure:
                raise E2EFailure(
                    f"scenario {self.scenario.name}, step {index} ({kind}): {failure}"
                    + self._operator_log()
                ) from None
            result = StepResult(index, kind, summary, time.monotonic() - started, started_at)
            self.results.append(result)
            self.log(f"  [{result.seconds:6.1f}s] {kind}: {summary}")
        return self.results

    def cleanup(self) -> None:
        """Policies first (their controllers stop, the operator deletes their checkpoints),
        then this scenario's nodes. Bounded; a policy stuck on its finalizer is released."""
        for name in self.policies:
            self._delete_policy(name)
        self.nodes.cleanup()

    # ----- reading ---------------------------------------------------------------------------
    def policy(self, name: str | None = None) -> dict[str, Any]:
        return self.kube.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name or self._current_policy()
        )

    def status(self, name: str | None = None) -> dict[str, Any]:
        return self.policy(name).get("status") or {}

    def event_reasons(self, name: str) -> list[str]:
        events = self.kube.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        )
        return [
            e.reason
            for e in events.items
            if e.involved_object.name == name and e.involved_object.kind == KIND
        ]

    # ----- node steps ------------------------------------------------------------------------
    def _add(self, nodes: list[Mapping[str, Any]]) -> str:
        for spec in nodes:
            self.nodes.add(spec)
        return ", ".join(n["name"] for n in nodes)

    def _cordon(self, names: list[str]) -> str:
        for name in names:
            self.nodes.cordon(name)
        return ", ".join(names)

    def _uncordon(self, names: list[str]) -> str:
        for name in names:
            self.nodes.cordon(name, unschedulable=False)
        return ", ".join(names)

    def _taint(self, args: Mapping[str, Any]) -> str:
        for name in args["names"]:
            self.nodes.taint(name, args["kind"])
        return f"{', '.join(args['names'])} ({args['kind']})"

    def _delete(self, names: list[str]) -> str:
        for name in names:
            self.nodes.delete(name)
        return ", ".join(names)

    def _flap(self, args: Mapping[str, Any]) -> str:
        times, pace = int(args.get("times", 3)), float(args.get("pace", 0.2))
        for _ in range(times):
            self.nodes.set_ready(args["name"], False)
            time.sleep(pace)  # pacing of the simulated kubelet, not a wait for a condition
            self.nodes.set_ready(args["name"], True)
            time.sleep(pace)
        return f"{args['name']} NotReady/Ready x{times}"

    def _set_latency(self, args: Mapping[str, Any]) -> str:
        self.nodes.set_latency(args["name"], args["latencyMs"])
        return f"{args['name']} latency {args['latencyMs']!r}"

    def _burst(self, args: Mapping[str, Any]) -> str:
        pace = float(args.get("pace", 0.1))
        changes = args.get("changes") or []
        for change in changes:
            kind, change_args = next(iter(change.items()))
            if kind == "delete":
                for name in change_args:
                    self.nodes.delete(name, wait=False)
            else:
                getattr(self, "_" + kind.replace("-", "_"))(change_args)
            time.sleep(pace)  # a burst is changes close together, on purpose
        return f"{len(changes)} changes, {pace}s apart"

    # ----- policy steps ----------------------------------------------------------------------
    def _apply_policy(self, args: Mapping[str, Any]) -> str:
        base: Mapping[str, Any] = {}
        name = args.get("name")
        if args.get("file"):
            document = yaml.safe_load((ROOT / args["file"]).read_text())
            base = document.get("spec") or {}
            name = name or document["metadata"]["name"]
        spec = deep_merge(deep_merge(base, args.get("spec") or {}), self.policy_overrides)
        if self.scenario.isolate:
            spec = deep_merge(
                spec, {"nodeSelector": {"matchLabels": {SCENARIO_LABEL: self.scenario.name}}}
            )
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": name, "labels": {SCENARIO_LABEL: self.scenario.name}},
            "spec": spec,
        }
        try:
            self.kube.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body
            )
        except kubernetes.client.ApiException as error:
            if error.status == 422 and args.get("invalid"):
                # Admission caught it first (a real API server, and the emulator since it
                # admits with the CRD's schema): also a correct outcome.
                self.rejected.add(name)
                self.policies.append(name)
                return f"{name}: rejected by the API server (HTTP 422), as it should be"
            if error.status == 409:
                raise E2EFailure(
                    f"MetaPolicy {self.namespace}/{name} already exists (left over from an "
                    "earlier run?); delete it and run again"
                ) from None
            raise
        self.policies.append(name)
        return f"{self.namespace}/{name}" + (" (invalid on purpose)" if args.get("invalid") else "")

    def _annotate_policy(self, args: Mapping[str, Any]) -> str:
        name = args.get("policy") or self._current_policy()
        value = json.dumps(args.get("request") or {}, sort_keys=True)
        patch = {"metadata": {"annotations": {ADAPT_REQUEST: value}}}
        self.kube.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, patch
        )
        return f"{name}: {ADAPT_REQUEST}={value}"

    def _expect(self, want: Mapping[str, Any]) -> str:
        name = want.get("policy") or self._current_policy()
        if name in self.rejected:
            return f"{name}: skipped (the API server rejected this policy)"
        timeout = float(want.get("timeout", self.scenario.timeout))
        wanted = {k: v for k, v in want.items() if k not in ("policy", "timeout")}
        what = f"MetaPolicy {self.namespace}/{name} to have {_describe(wanted)}"
        started = time.monotonic()
        last: dict[str, Any] = {"status": {}, "problems": ["not read yet"]}

        def satisfied() -> bool:
            status = self.status(name)
            problems, hopeless = mismatches(wanted, status)
            if not problems and "events" in wanted:
                missing = set(wanted["events"]) - set(self.event_reasons(name))
                problems += [f"no Event with reason {r}" for r in sorted(missing)]
            if not problems and wanted.get("phase") == "Ready" and not self._in_sync(name):
                problems.append("metapolicy_policy_in_sync is not 1 yet")
            if not problems and "nodeObjects" in wanted:
                gone = [n for n in wanted["nodeObjects"] if not self.nodes.exists(n)]
                problems += [f"node object {n} is gone" for n in gone]
                hopeless |= bool(gone)  # nothing brings a deleted node back
            last.update(status=status, problems=problems)
            if self.on_wait is not None:
                self.on_wait(what, status, time.monotonic() - started)
            if hopeless:
                raise E2EFailure(f"{what}, but it cannot happen any more: {_seen(last)}")
            return not problems

        poll(satisfied, timeout, what, interval=0.25, describe=lambda: _seen(last))
        return f"{name}: {_describe(wanted)}"

    # ----- operator steps --------------------------------------------------------------------
    def _kill_operator(self, args: Mapping[str, Any]) -> str:
        if self.operator is None:
            raise E2EFailure("kill-operator needs the operator process (Autoscaler.operator)")
        phase = args.get("whilePhase")
        status: dict[str, Any] = {}
        if phase:

            def in_phase() -> bool:
                status.update(self.status())
                return status.get("phase") == phase

            timeout = float(args.get("timeout", self.scenario.timeout))
            poll(in_phase, timeout, f"phase {phase} to kill the operator in", interval=0.05,
                 describe=lambda: f"phase={status.get('phase')!r}")  # fmt: skip
        pid = self.operator.process.pid if self.operator.process else None
        self.operator.kill()
        return f"SIGKILL to pid {pid} and its workers while {status.get('message', 'running')!r}"

    def _start_operator(self, args: Mapping[str, Any]) -> str:
        if self.operator is None:
            raise E2EFailure("start-operator needs the operator process (Autoscaler.operator)")
        self.operator.start()
        return f"started again, metrics on {self.operator.metrics_url}"

    # ----- helpers ---------------------------------------------------------------------------
    def _current_policy(self) -> str:
        if not self.policies:
            raise E2EFailure("no policy applied yet (add an apply-policy step first)")
        return self.policies[-1]

    def _delete_policy(self, name: str, timeout: float = 30.0) -> None:
        try:
            self.kube.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return
            raise

        def gone() -> bool:
            try:
                self.policy(name)
                return False
            except kubernetes.client.ApiException as error:
                if error.status == 404:
                    return True
                raise

        try:
            poll(gone, timeout, f"MetaPolicy {name} to be deleted")
        except E2EFailure:
            # The operator is not there to run its finalizer (e.g. a failed crash test).
            self.log(f"  warning: MetaPolicy {name} not deleted in {timeout:.0f}s; releasing it")
            self.kube.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, {"metadata": {"finalizers": None}}
            )

    def _in_sync(self, name: str) -> bool:
        """Whether the operator's latest reconcile found the policy in sync with its nodes.

        `phase: Ready` is written when an adaptation finishes, *before* the operator re-reads
        the node set; node changes made in that moment could be taken in half by that re-read
        (two adaptations where one is expected). The in-sync gauge is set by the re-read, so
        waiting for it makes the next step start from a quiet operator. True when there is
        no operator process to ask (e.g. the operator runs elsewhere).
        """
        if self.operator is None or not self.operator.metrics_url:
            return True
        try:
            with urllib.request.urlopen(self.operator.metrics_url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return False
        key = f"{self.namespace}/{name}"
        for family in text_string_to_metric_families(text):
            if family.name == "metapolicy_policy_in_sync":
                return any(s.labels.get("policy") == key and s.value == 1 for s in family.samples)
        return False

    def _operator_log(self) -> str:
        if self.operator is None:
            return ""
        return f"\n--- operator log (tail) ---\n{self.operator.log_tail(2500)}"


def _describe(want: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in want.items())


def _seen(last: Mapping[str, Any]) -> str:
    status = last["status"]
    record = (status.get("history") or [{}])[-1]
    return (
        f"mismatches: {'; '.join(last['problems'])}; last seen phase={status.get('phase')!r} "
        f"message={status.get('message')!r} nodes={status.get('nodes')} "
        f"history={len(status.get('history') or [])} "
        f"newest record={ {k: record.get(k) for k in ('strategy', 'outcome', 'reason')} }"
    )
