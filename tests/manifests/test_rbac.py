"""RBAC grants every API call each component makes, and nothing else.

Two ServiceAccounts, two lists. CALLS is the operator's, each call with where it is made:
kopf's (from the handlers it runs) by hand, the operator's own by scanning its source for
kubernetes-client methods (CLIENT_METHODS maps each to its call). SERVE_CALLS is the placement
server's (`metapolicy serve`), found by scanning operator/metapolicy_operator/serving/ the same
way (SERVE_CLIENT_METHODS). A new call in either fails here until it is listed and granted.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

OPERATOR_SOURCE = Path(__file__).resolve().parents[2] / "operator" / "metapolicy_operator"
SERVE_SOURCE = OPERATOR_SOURCE / "serving"
NAMESPACE = "metapolicy-system"
SERVICE_ACCOUNT = {"kind": "ServiceAccount", "name": "metapolicy-operator"}
SERVE_ACCOUNT = {"kind": "ServiceAccount", "name": "metapolicy-serve"}
#: Not run by the operator's ServiceAccount: the kubectl plugin runs with the user's own
#: credentials (whatever `kubectl` uses), the emulator is test machinery.
NOT_THE_OPERATOR = {"kubectl_plugin.py", "embedded.py"}

# (API group, resource, verb): why.
CALLS = {
    # handlers.py: @kopf.index and @kopf.on.event on nodes -> kopf lists, then watches.
    ("", "nodes", "list"): "kopf: handlers.nodes / node_changed",
    ("", "nodes", "watch"): "kopf: handlers.nodes / node_changed",
    # recorder.py: @kopf.on.event on pods; each recording lists its namespaces' pods at start.
    ("", "pods", "list"): "kopf: recorder.pod_event; recorder._list_pods",
    ("", "pods", "watch"): "kopf: recorder.pod_event",
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
    # training_jobs.JobRunner (spec.training.backend: job): create, poll, delete the Job.
    ("batch", "jobs", "create"): "JobRunner.run",
    ("batch", "jobs", "get"): "JobRunner._wait",
    ("batch", "jobs", "delete"): "JobRunner.run (cleanup, cancellation)",
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
    "create_namespaced_job": ("batch", "jobs", "create"),
    "read_namespaced_job": ("batch", "jobs", "get"),
    "delete_namespaced_job": ("batch", "jobs", "delete"),
    "list_namespaced_pod": ("", "pods", "list"),
}


# The placement server's calls (`metapolicy serve`, operator/metapolicy_operator/serving/).
# It only reads: caches of nodes, pods and MetaPolicies (list, then watch), and the checkpoint
# store's ConfigMaps (the active pointer, watched, and the active version, read).
SERVE_CALLS = {
    ("", "nodes", "list"): "serving: node cache (informer.py lists, then watches)",
    ("", "nodes", "watch"): "serving: node cache",
    ("", "pods", "list"): "serving: pod cache (informer.py lists, then watches)",
    ("", "pods", "watch"): "serving: pod cache",
    ("metapolicy.dev", "metapolicies", "list"): "serving: policies.py, which policy places a pod",
    ("metapolicy.dev", "metapolicies", "watch"): "serving: policies.py",
    ("", "configmaps", "get"): "serving: the active version's checkpoint (ConfigMapStore)",
    ("", "configmaps", "list"): "serving: the active pointer (informer) and the store's versions",
    ("", "configmaps", "watch"): "serving: the active pointer, so a promotion arrives at once",
}

# Every kubernetes-client method named in serving/ -> the calls it makes there. The list
# methods feed informer.py, which calls each with watch=True after listing.
SERVE_CLIENT_METHODS = {
    "list_node": {("", "nodes", "list"), ("", "nodes", "watch")},
    "list_pod_for_all_namespaces": {("", "pods", "list"), ("", "pods", "watch")},
    "list_namespaced_pod": {("", "pods", "list"), ("", "pods", "watch")},
    "list_cluster_custom_object": {
        ("metapolicy.dev", "metapolicies", "list"),
        ("metapolicy.dev", "metapolicies", "watch"),
    },
    "list_namespaced_custom_object": {
        ("metapolicy.dev", "metapolicies", "list"),
        ("metapolicy.dev", "metapolicies", "watch"),
    },
    "list_config_map_for_all_namespaces": {("", "configmaps", "list"), ("", "configmaps", "watch")},
    "list_namespaced_config_map": {("", "configmaps", "list"), ("", "configmaps", "watch")},
    "read_namespaced_config_map": {("", "configmaps", "get")},
}

# Calls the server makes through operator modules it imports (the scan above sees serving/
# only). ConfigMapStore also writes, for the operator; the server only loads the active
# version (policies.load_version -> ConfigMapStore.load -> _read).
SERVE_THROUGH_IMPORTS = {"read_namespaced_config_map": "ConfigMapStore.load"}
#: The operator modules serving/ imports, read for client calls by hand: a new one fails
#: test_the_servers_calls_in_the_code_are_listed until its calls are looked at. (config
#: builds the client and objects reads dicts: neither calls the API.)
SERVE_IMPORTS = {"config", "configmap_store", "inventory", "objects", "pods", "spec"}

#: Each component: its ServiceAccount, its calls, and the sources scanned for client methods.
COMPONENTS = {
    "operator": (SERVICE_ACCOUNT, CALLS),
    "serve": (SERVE_ACCOUNT, SERVE_CALLS),
}


def _granted(by_kind, account: dict[str, str]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) the ServiceAccount gets through its (Cluster)RoleBindings."""
    roles = {r["metadata"]["name"]: r for r in by_kind("ClusterRole")}
    bound = [
        b["roleRef"]["name"]
        for b in by_kind("ClusterRoleBinding") + by_kind("RoleBinding")
        if any(account.items() <= s.items() for s in b["subjects"])
    ]
    return {
        (group, resource, verb)
        for name in bound
        for rule in roles[name]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.fixture(scope="module")
def granted(by_kind) -> set[tuple[str, str, str]]:
    """(group, resource, verb) the operator's ServiceAccount gets through its bindings."""
    return _granted(by_kind, SERVICE_ACCOUNT)


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_call_is_granted(by_kind, component):
    account, calls = COMPONENTS[component]
    granted = _granted(by_kind, account)
    missing = {call: why for call, why in calls.items() if call not in granted}
    assert not missing, f"{component}: not granted: {missing}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_nothing_else_is_granted(by_kind, component):
    account, calls = COMPONENTS[component]
    granted = _granted(by_kind, account)
    assert granted <= calls.keys(), (
        f"{component}: granted but never called: {granted - calls.keys()}"
    )
    for role in by_kind("ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule


def test_the_server_only_reads():
    verbs = {verb for _, _, verb in SERVE_CALLS}
    assert verbs <= {"get", "list", "watch"}, verbs


def _api_methods() -> set[str]:
    api_source = Path(importlib.util.find_spec("kubernetes").origin).parent / "client" / "api"
    return {
        method
        for path in api_source.glob("*_api.py")  # read, not imported: importing all is slow
        for method in re.findall(
            r"def ((?:create|read|get|list|watch|patch|replace|delete|connect)_\w+)\(\s*self\b",
            path.read_text(),
        )
        if not method.endswith("_with_http_info")
    }


def _called(sources: list[Path]) -> set[str]:
    return {word for path in sources for word in re.findall(r"\.(\w+)", path.read_text())}


def test_calls_in_the_code_are_listed():
    """Any method of the kubernetes client's *Api classes named in the operator's source."""
    sources = [p for p in OPERATOR_SOURCE.glob("*.py") if p.name not in NOT_THE_OPERATOR]
    called = _called(sources) & _api_methods()
    assert called, "no client call found: has the code moved?"
    unknown = called - CLIENT_METHODS.keys()
    assert not unknown, f"add these calls to CLIENT_METHODS and CALLS, and grant them: {unknown}"
    assert set(CLIENT_METHODS.values()) <= CALLS.keys()


def test_the_servers_calls_in_the_code_are_listed():
    """The same for serving/: every client method it names is in SERVE_CLIENT_METHODS, and
    together with the calls made through the operator modules it imports, they are exactly
    SERVE_CALLS (so nothing is granted that it does not call)."""
    sources = sorted(SERVE_SOURCE.glob("*.py"))
    imported = {
        module
        for path in sources
        for module in re.findall(r"from metapolicy_operator\.(\w+) import", path.read_text())
    }
    assert imported == SERVE_IMPORTS, f"serving/ imports changed: read {imported - SERVE_IMPORTS}"
    called = _called(sources) & _api_methods()
    assert called, "no client call found in serving/: has the code moved?"
    unknown = called - SERVE_CLIENT_METHODS.keys()
    assert not unknown, f"add to SERVE_CLIENT_METHODS and SERVE_CALLS, and grant: {unknown}"
    called |= SERVE_THROUGH_IMPORTS.keys()
    made = set().union(*(SERVE_CLIENT_METHODS[m] for m in called))
    assert made == SERVE_CALLS.keys(), made ^ SERVE_CALLS.keys()


@pytest.mark.parametrize(
    ("component", "deployment_name"),
    [("operator", "metapolicy-operator"), ("serve", "metapolicy-serve")],
)
def test_bindings_name_the_deployments_service_account(
    by_kind, by_name, component, deployment_name
):
    account, _ = COMPONENTS[component]
    assert by_name("ServiceAccount", account["name"])
    deployment = by_name("Deployment", deployment_name)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]
    roles = {r["metadata"]["name"] for r in by_kind("ClusterRole")}
    names = {a["name"] for a, _ in COMPONENTS.values()}
    assert {a["metadata"]["name"] for a in by_kind("ServiceAccount")} == names
    for binding in by_kind("ClusterRoleBinding"):
        assert binding["roleRef"]["name"] in roles
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount" and subject["namespace"] == NAMESPACE
        assert subject["name"] in names


# A training Job's pod (job_command.py, through stores.py and workloads.py).
TRAINER_CALLS = {
    ("metapolicy.dev", "metapolicies", "get"): "job_command.work: the MetaPolicy's spec",
    ("", "configmaps", "get"): "ConfigMapStore.load / manifest / load_trace, the input",
    ("", "configmaps", "create"): "job_command.work: the result ConfigMap",
}


def test_the_trainer_role_grants_what_a_training_job_calls(by_kind):
    called = _called([OPERATOR_SOURCE / "job_command.py"]) & _api_methods()
    assert called == {
        "get_namespaced_custom_object",
        "read_namespaced_config_map",
        "create_namespaced_config_map",
    }, "job_command.py calls changed: update TRAINER_CALLS and the metapolicy-trainer role"
    (role,) = [r for r in by_kind("ClusterRole") if r["metadata"]["name"] == "metapolicy-trainer"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == TRAINER_CALLS.keys()
