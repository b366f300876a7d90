"""RBAC grants every API call the operator makes, and nothing else.

CALLS is the list of calls, each with where it is made: kopf's (from the handlers it runs) by
hand, the operator's own by scanning its source for kubernetes-client methods (CLIENT_METHODS
maps each to its call), so a new call there fails here until it is listed and granted.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

OPERATOR_SOURCE = Path(__file__).resolve().parents[2] / "operator" / "metapolicy_operator"
SERVICE_ACCOUNT = {"kind": "ServiceAccount", "name": "metapolicy-operator"}

# (API group, resource, verb): why.
CALLS = {
    # handlers.py: @kopf.index and @kopf.on.event on nodes -> kopf lists, then watches.
    ("", "nodes", "list"): "kopf: handlers.nodes / node_changed",
    ("", "nodes", "watch"): "kopf: handlers.nodes / node_changed",
    # handlers.py: @kopf.daemon, @kopf.on.event, @kopf.on.delete on metapolicies.
    ("metapolicy.dev", "metapolicies", "list"): "kopf: handlers.policy_*",
    ("metapolicy.dev", "metapolicies", "watch"): "kopf: handlers.policy_*",
    ("metapolicy.dev", "metapolicies", "patch"): "kopf: finalizer (on.delete), annotations",
    ("metapolicy.dev", "metapolicies", "get"): "controller.reconcile: get_namespaced_custom_object",
    ("metapolicy.dev", "metapolicies/status", "patch"): "controller.write_status; kopf status.kopf",
    # controller.report -> kopf.event; kopf 1.45 posts core/v1 Events (_cogs/clients/events.py).
    ("", "events", "create"): "controller.report: kopf.event",
    # configmap_store.ConfigMapStore, one method per call.
    ("", "configmaps", "create"): "ConfigMapStore.save / set_active",
    ("", "configmaps", "get"): "ConfigMapStore._read",
    ("", "configmaps", "list"): "ConfigMapStore._list",
    ("", "configmaps", "patch"): "ConfigMapStore.set_active",
    ("", "configmaps", "delete"): "ConfigMapStore._delete (pruning, delete_all)",
    # kopf's discovery (kopf/_core/reactor/observation.py).
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): "kopf: resource_observer",
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): "kopf: resource_observer",
    ("", "namespaces", "list"): "kopf: namespace_observer, with --namespace only",
    ("", "namespaces", "watch"): "kopf: namespace_observer, with --namespace only",
    # --peering (kopf/_core/engines/peering.py): watch the peers, patch our keep-alive.
    **{
        ("kopf.dev", peering, verb): "kopf: peering (optional HA mode)"
        for peering in ("clusterkopfpeerings", "kopfpeerings")
        for verb in ("list", "watch", "patch")
    },
}

# Every kubernetes-client method the operator calls -> the call it makes.
CLIENT_METHODS = {
    "get_namespaced_custom_object": ("metapolicy.dev", "metapolicies", "get"),
    "patch_namespaced_custom_object_status": ("metapolicy.dev", "metapolicies/status", "patch"),
    "create_namespaced_config_map": ("", "configmaps", "create"),
    "read_namespaced_config_map": ("", "configmaps", "get"),
    "list_namespaced_config_map": ("", "configmaps", "list"),
    "patch_namespaced_config_map": ("", "configmaps", "patch"),
    "delete_namespaced_config_map": ("", "configmaps", "delete"),
}


@pytest.fixture(scope="module")
def granted(by_kind) -> set[tuple[str, str, str]]:
    """(group, resource, verb) the operator's ServiceAccount gets through its bindings."""
    roles = {r["metadata"]["name"]: r for r in by_kind("ClusterRole")}
    bound = [
        b["roleRef"]["name"]
        for b in by_kind("ClusterRoleBinding")
        if any(SERVICE_ACCOUNT.items() <= s.items() for s in b["subjects"])
    ]
    return {
        (group, resource, verb)
        for name in bound
        for rule in roles[name]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_every_call_is_granted(granted):
    missing = {call: why for call, why in CALLS.items() if call not in granted}
    assert not missing, f"not granted: {missing}"


def test_nothing_else_is_granted(granted, by_kind):
    assert granted <= CALLS.keys(), f"granted but never called: {granted - CALLS.keys()}"
    for role in by_kind("ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule


def test_calls_in_the_code_are_listed():
    """Any method of the kubernetes client's *Api classes named in the operator's source."""
    api_source = Path(importlib.util.find_spec("kubernetes").origin).parent / "client" / "api"
    api_methods = {
        method
        for path in api_source.glob("*_api.py")  # read, not imported: importing all is slow
        for method in re.findall(
            r"def ((?:create|read|get|list|watch|patch|replace|delete|connect)_\w+)\(\s*self\b",
            path.read_text(),
        )
        if not method.endswith("_with_http_info")
    }
    sources = [p for p in OPERATOR_SOURCE.glob("*.py") if p.name != "embedded.py"]  # test-only
    called = {
        word for path in sources for word in re.findall(r"\.(\w+)", path.read_text())
    } & api_methods
    assert called, "no client call found: has the code moved?"
    unknown = called - CLIENT_METHODS.keys()
    assert not unknown, f"add these calls to CLIENT_METHODS and CALLS, and grant them: {unknown}"
    assert set(CLIENT_METHODS.values()) <= CALLS.keys()


def test_bindings_name_the_deployments_service_account(by_kind, deployment):
    (account,) = by_kind("ServiceAccount")
    assert account["metadata"]["name"] == SERVICE_ACCOUNT["name"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == SERVICE_ACCOUNT["name"]
    roles = {r["metadata"]["name"] for r in by_kind("ClusterRole")}
    for binding in by_kind("ClusterRoleBinding"):
        assert binding["roleRef"]["name"] in roles
        assert binding["subjects"] == [SERVICE_ACCOUNT | {"namespace": "metapolicy-system"}]
