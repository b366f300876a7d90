"""
``kubectl metapolicy`` (metapolicy_operator.kubectl_plugin) against the embedded cluster.

Each test calls ``main([...])`` as kubectl would run the plugin, and checks what it wrote
to the object (spec.paused, the lifecycle annotations) and what it printed. The operator
side of these controls is tested with the operator; here nothing reacts to them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from e2e.embedded import EmbeddedCluster, write_kubeconfig
from metapolicy_operator import kubectl_plugin
from metapolicy_operator.kubectl_plugin import STRATEGIES, main

if TYPE_CHECKING:
    from conftest import Api

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "metapolicy.dev", "v1alpha1", "metapolicies"


def policies(namespace: str = "default") -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def record(version: int, outcome: str = "promoted", **fields: Any) -> dict[str, Any]:
    minute = 10 + version
    return {
        "oldNodes": 4,
        "newNodes": 5,
        "strategy": "zero_padding",
        "adaptationTime": 4.2,
        "performanceRetention": 0.97,
        "retentionInterval": [0.93, 1.01],
        "candidateScore": 0.98,
        "backupScore": 1.01,
        "outcome": outcome,
        "reason": f"reason of version {version}",
        "trigger": "nodes-changed",
        "version": version,
        "startedAt": f"2026-01-01T10:{minute}:00Z",
        "finishedAt": f"2026-01-01T10:{minute}:05Z",
    } | fields


HISTORY = [
    record(1, strategy="initial", oldNodes=0, newNodes=4),
    record(2),
    record(3, "rolled_back", drill=True),
    record(4),
    record(5, "rolled_back"),
]
STATUS = {
    "phase": "Ready",
    "message": "serving version 4",
    "currentNodes": 5,
    "eligibleNodes": 6,
    "activeVersion": 4,
    "backupVersion": 2,
    "lastAdaptation": HISTORY[-1],
    "history": HISTORY,
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Serving",
            "message": "version 4 serves 5 nodes",
            "lastTransitionTime": "2026-01-01T10:14:05Z",
        },
        {"type": "Degraded", "status": "False", "reason": "Healthy", "message": ""},
    ],
}


async def create(api: Api, name: str, namespace: str = "default", status: Any = None) -> dict:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MetaPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {},
    }
    created = await api.create(policies(namespace), body)
    if status is not None:
        created = await api.patch(f"{policies(namespace)}/{name}/status", {"status": status})
    return created


@pytest.fixture
def plugin(cluster: EmbeddedCluster, capsys: pytest.CaptureFixture[str]):
    """Run the plugin with the cluster's kubeconfig: (exit code, stdout, stderr)."""

    async def run(*args: str, kubeconfig: Path | None = None) -> tuple[int, str, str]:
        argv = [*args, "--kubeconfig", str(kubeconfig or cluster.kubeconfig)]
        code = await asyncio.to_thread(main, argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run


async def test_status_shows_versions_nodes_conditions_timeline_and_decisions(api, plugin):
    await create(api, "web", status=STATUS)
    code, out, err = await plugin("status", "web")
    assert (code, err) == (0, "")
    assert "Phase:      Ready" in out
    assert "Serving:    version 4  (backup version 2)" in out
    assert "Nodes:      5 in the policy, 6 eligible" in out
    assert "Ready     True    Serving" in out and "version 4 serves 5 nodes" in out
    assert "Degraded  False   Healthy" in out
    # The timeline (metapolicy.timeline) has a row per record, with its event...
    timeline = out.split("Timeline (status.history):")[1].split("Last decisions:")[0]
    assert [line.split()[1] for line in timeline.splitlines() if line.startswith("  +")] == [
        "train", "scale", "drill", "scale", "scale",
    ]  # fmt: skip
    # ... and the last decisions come newest first, with outcome and reason.
    decisions = out.split("Last decisions:")[1].strip().splitlines()
    assert len(decisions) == kubectl_plugin.LAST_DECISIONS
    assert "version 5 rolled_back (zero_padding): reason of version 5" in decisions[0]
    assert "drill: version 3 rolled_back" in decisions[2]


async def test_status_of_a_new_policy_and_the_paused_flag(api, plugin):
    await create(api, "fresh")
    await api.patch(f"{policies()}/fresh", {"spec": {"paused": True}})
    code, out, _ = await plugin("status", "fresh")
    assert code == 0
    assert "Phase:      <none>  (paused: no training or adaptation starts)" in out
    assert "<no training or adaptation yet>" in out and "Last decisions" not in out


async def test_status_and_history_list_a_namespace_or_all(api, plugin):
    await create(api, "web", status=STATUS)
    await create(api, "batch")
    await create(api, "infra", namespace="kube-system")

    code, out, _ = await plugin("status")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "PHASE", "VERSION", "NODES", "MESSAGE"]
    assert [line.split()[0] for line in lines[1:]] == ["batch", "web"]
    assert "Ready" in lines[2] and "version 4" in lines[2] and "5/6" in lines[2]

    code, out, _ = await plugin("status", "-A")
    rows = [line.split()[:2] for line in out.strip().splitlines()[1:]]
    assert rows == [["default", "batch"], ["default", "web"], ["kube-system", "infra"]]

    code, out, _ = await plugin("history", "--all-namespaces", "-o", "json")
    histories = json.loads(out)
    assert histories == {"default/batch": [], "default/web": HISTORY, "kube-system/infra": []}

    code, out, _ = await plugin("status", "-n", "kube-system", "infra", "-o", "json")
    assert json.loads(out)["metadata"]["namespace"] == "kube-system"


async def test_history_prints_the_whole_timeline(api, plugin):
    await create(api, "web", status=STATUS)
    code, out, _ = await plugin("history", "web")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("+")]
    assert len(rows) == len(HISTORY)
    assert rows[0].split()[:2] == ["+00:00", "train"] and rows[-1].split()[0] == "+04:00"
    assert out.count("reason: reason of version") == len(HISTORY)

    code, out, _ = await plugin("history", "web", "-o", "json")
    assert json.loads(out) == HISTORY


async def test_pause_and_resume_set_spec_paused(api, plugin):
    await create(api, "web")
    code, out, _ = await plugin("pause", "web")
    assert (code, out) == (0, "metapolicy.metapolicy.dev/web paused\n")
    assert (await api.get(f"{policies()}/web"))["spec"]["paused"] is True

    code, out, _ = await plugin("resume", "web", "-o", "json")
    assert code == 0 and json.loads(out)["spec"]["paused"] is False
    assert (await api.get(f"{policies()}/web"))["spec"]["paused"] is False


async def test_promote_abort_and_undo_write_their_annotations(api, plugin):
    await create(api, "web", status=STATUS)

    code, out, _ = await plugin("promote", "web", "v5")
    assert (code, out) == (0, "metapolicy.metapolicy.dev/web promotion of version 5 requested\n")
    code, _, _ = await plugin("abort", "web")
    code, _, _ = await plugin("undo", "web")  # the backup: status.backupVersion
    annotations = (await api.get(f"{policies()}/web"))["metadata"]["annotations"]
    assert annotations["metapolicy.dev/promote"] == "5"
    assert annotations["metapolicy.dev/rollback-to"] == "2"
    aborted = dt.datetime.fromisoformat(annotations["metapolicy.dev/abort"].replace("Z", "+00:00"))
    assert abs(dt.datetime.now(dt.UTC) - aborted) < dt.timedelta(minutes=5)

    code, out, _ = await plugin("undo", "web", "--to-revision", "1")
    assert (code, out) == (0, "metapolicy.metapolicy.dev/web rollback to version 1 requested\n")
    annotations = (await api.get(f"{policies()}/web"))["metadata"]["annotations"]
    assert annotations["metapolicy.dev/rollback-to"] == "1"


async def test_undo_without_a_backup_takes_the_previous_promoted_version(api, plugin):
    status = {k: v for k, v in STATUS.items() if k != "backupVersion"}
    await create(api, "web", status=status)
    code, _, _ = await plugin("undo", "web")
    annotations = (await api.get(f"{policies()}/web"))["metadata"]["annotations"]
    assert code == 0 and annotations["metapolicy.dev/rollback-to"] == "2"  # 4 serves, 5 failed

    await create(api, "new", status={"phase": "Ready", "activeVersion": 1})
    code, out, err = await plugin("undo", "new")
    assert (code, out) == (2, "")
    assert err == (
        'error: metapolicy "new" in namespace "default" has no earlier version to roll back '
        "to (no status.backupVersion, no earlier promoted version in status.history)\n"
    )
    assert "metapolicy.dev/rollback-to" not in (
        (await api.get(f"{policies()}/new"))["metadata"].get("annotations") or {}
    )


async def test_drill_and_adapt_request_with_a_new_value_each_time(api, plugin):
    await create(api, "web")
    path = f"{policies()}/web"

    code, out, _ = await plugin("drill", "web")
    assert (code, out) == (0, "metapolicy.metapolicy.dev/web rollback drill requested\n")
    raw = (await api.get(path))["metadata"]["annotations"]["metapolicy.dev/adapt-request"]
    drill = json.loads(raw)
    assert drill["drill"] is True and drill["reason"] and drill["requestedAt"].endswith("Z")

    code, _, _ = await plugin("adapt", "web", "--strategy", "zero_padding", "--reason", "test")
    request = json.loads((await api.get(path))["metadata"]["annotations"][
        "metapolicy.dev/adapt-request"])  # fmt: skip
    assert {k: request[k] for k in ("strategy", "reason")} == {
        "strategy": "zero_padding", "reason": "test"
    }  # fmt: skip
    assert "drill" not in request
    assert request["requestedAt"] != drill["requestedAt"]  # the operator sees a new request


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "nope"], 'error: metapolicy "nope" in namespace "default" not found'),
        (
            ["pause", "nope", "-n", "kube-system"],
            'error: metapolicy "nope" in namespace "kube-system"',
        ),
        (["promote", "web", "latest"], "error: version 'latest' is not a policy version"),
        (["promote", "web", "0"], "error: version '0' is not a policy version"),
        (["adapt", "web", "--strategy", "magic"], "error: argument --strategy: invalid choice"),
        (["pause", "-A"], "error: the following arguments are required: NAME"),
        (["status", "web", "-A"], "error: -A/--all-namespaces lists policies"),
        (["rewind", "web"], "error: argument COMMAND: invalid choice: 'rewind'"),
    ],
    ids=[
        "unknown-policy",
        "unknown-in-namespace",
        "version-word",
        "version-zero",
        "strategy",
        "no-name",
        "all-namespaces-with-name",
        "command",
    ],
)
async def test_user_errors_are_one_line_and_exit_2(api, plugin, args, message):
    await create(api, "web")
    code, out, err = await plugin(*args)
    assert (code, out) == (2, "")
    assert err.startswith(message) and err.count("\n") == 1, err
    assert "Traceback" not in err


async def test_an_unreadable_kubeconfig_and_an_unreachable_api_are_one_line(plugin, tmp_path):
    broken = tmp_path / "broken"
    broken.write_text("clusters: [")
    code, _, err = await plugin("status", "web", kubeconfig=broken)
    assert code == 2 and err.startswith(f"error: cannot use kubeconfig {broken}:")
    assert err.count("\n") == 1

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = write_kubeconfig(tmp_path / "closed", f"http://127.0.0.1:{port}")
    code, _, err = await plugin("status", "web", kubeconfig=closed)
    assert code == 2 and err.startswith(
        f"error: cannot reach the API server at http://127.0.0.1:{port}"
    )
    assert err.count("\n") == 1


async def test_the_namespace_defaults_to_the_kubeconfigs_context(api, plugin, cluster, tmp_path):
    await create(api, "infra", namespace="kube-system")
    kubeconfig = write_kubeconfig(tmp_path / "kc", cluster.url, namespace="kube-system")
    code, out, _ = await plugin("status", "infra", "-o", "json", kubeconfig=kubeconfig)
    assert code == 0 and json.loads(out)["metadata"]["name"] == "infra"


def test_strategies_are_the_crds():
    crd = yaml.safe_load((ROOT / "crds" / "metapolicy.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert list(STRATEGIES) == spec["properties"]["strategy"]["enum"]
    assert spec["properties"]["paused"] == spec["properties"]["paused"] | {
        "type": "boolean", "default": False
    }  # fmt: skip


def test_the_plugin_needs_neither_kmock_nor_e2e():
    code = (
        "import sys, metapolicy_operator.kubectl_plugin as p; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kmock', 'e2e')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "operator", timeout=60)
