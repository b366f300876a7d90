"""The second scheduler profile (manifests/scheduler/): the stock kube-scheduler, configured to
call the MetaPolicy server as an extender.

kube-scheduler decodes its configuration strictly: an unknown or misspelt field stops it at
start. No kube-scheduler runs here, so the KubeSchedulerConfiguration is checked against the
JSON field names of its Go types, at every level it configures, read from the sources:

- kubescheduler.config.k8s.io/v1 `KubeSchedulerConfiguration`, `KubeSchedulerProfile`,
  `Extender`: kubernetes/kubernetes staging/src/k8s.io/kube-scheduler/config/v1/types.go
  (commit 08ced910cf7fcea2f14052f3fab1a199eaf3064b);
- `LeaderElectionConfiguration` and the inlined `DebuggingConfiguration`:
  staging/src/k8s.io/component-base/config/v1alpha1/types.go (commit 01e8d0dd52a8).

The Kubernetes objects around it (ServiceAccount, RBAC, ConfigMap, Deployment) are validated by
kubernetes-validate like the base's.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from e2e.extender import SCHEDULER_CONFIG, ExtenderConfig, parse_go_duration
from e2e.scheduler import SCHEDULER_NAME
from metapolicy_operator.serving.scores import RUNNER_UP, TOP

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
KUBERNETES_VERSIONS = ("1.28", kubernetes_validate.latest_version())
NAMESPACE = "metapolicy-system"
ACCOUNT = {"kind": "ServiceAccount", "name": "metapolicy-scheduler", "namespace": NAMESPACE}

# JSON field names by Go type (see the module's docstring for the sources). A nested mapping is
# a struct whose own fields are checked; a list holds the element type of a slice.
LEADER_ELECTION = dict.fromkeys(
    ("leaderElect", "leaseDuration", "renewDeadline", "retryPeriod", "resourceLock",
     "resourceName", "resourceNamespace")
)  # fmt: skip
CLIENT_CONNECTION = dict.fromkeys(
    ("kubeconfig", "acceptContentTypes", "contentType", "qps", "burst")
)
EXTENDER = dict.fromkeys(
    ("urlPrefix", "filterVerb", "preemptVerb", "prioritizeVerb", "weight", "bindVerb",
     "enableHTTPS", "tlsConfig", "httpTimeout", "nodeCacheCapable", "managedResources",
     "ignorable")
)  # fmt: skip
PROFILE = dict.fromkeys(
    ("schedulerName", "percentageOfNodesToScore", "percentageOfPlacementsToScore", "plugins",
     "pluginConfig")
)  # fmt: skip
CONFIGURATION: dict[str, Any] = {
    **dict.fromkeys(("apiVersion", "kind")),  # metav1.TypeMeta, inlined
    **dict.fromkeys(("enableProfiling", "enableContentionProfiling")),  # DebuggingConfiguration
    **dict.fromkeys(
        (
            "parallelism",
            "percentageOfNodesToScore",
            "percentageOfPlacementsToScore",
            "podInitialBackoffSeconds",
            "podMaxBackoffSeconds",
            "delayCacheUntilActive",
        )
    ),
    "leaderElection": LEADER_ELECTION,
    "clientConnection": CLIENT_CONNECTION,
    "profiles": [PROFILE],
    "extenders": [EXTENDER],
}


def unknown_fields(value: Any, schema: Any, path: str = "") -> list[str]:
    """Paths of the fields in `value` that its Go type does not have."""
    if isinstance(schema, list):
        assert isinstance(value, list), f"{path or '.'} must be a list"
        return [
            p
            for i, item in enumerate(value)
            for p in unknown_fields(item, schema[0], f"{path}[{i}]")
        ]
    if isinstance(schema, Mapping):
        assert isinstance(value, Mapping), f"{path or '.'} must be an object"
        found = []
        for key, item in value.items():
            where = f"{path}.{key}"
            if key not in schema:
                found.append(where)
            elif schema[key] is not None:
                found += unknown_fields(item, schema[key], where)
        return found
    return []


@pytest.fixture(scope="module")
def config_map(scheduler_objects) -> dict[str, Any]:
    (found,) = [o for o in scheduler_objects if o["kind"] == "ConfigMap"]
    return found


@pytest.fixture(scope="module")
def configuration(config_map) -> dict[str, Any]:
    return yaml.safe_load(config_map["data"]["config.yaml"])


@pytest.fixture(scope="module")
def scheduler_deployment(scheduler_objects) -> dict[str, Any]:
    (found,) = [o for o in scheduler_objects if o["kind"] == "Deployment"]
    return found


def test_the_driver_reads_this_config_map(config_map):
    assert SCHEDULER_CONFIG == MANIFESTS / "scheduler" / "configmap.yaml"
    assert yaml.safe_load(SCHEDULER_CONFIG.read_text()) == config_map


def test_configuration_uses_only_fields_of_the_go_types(configuration):
    assert configuration["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert configuration["kind"] == "KubeSchedulerConfiguration"
    assert unknown_fields(configuration, CONFIGURATION) == []


@pytest.mark.parametrize(
    ("where", "path"),
    [
        ((), ".extender"),
        (("leaderElection",), ".leaderElection.leaderElection"),
        (("profiles", 0), ".profiles[0].name"),
        (("extenders", 0), ".extenders[0].httptimeout"),
    ],
    ids=["top", "leaderElection", "profile", "extender"],
)
def test_a_stray_field_is_caught_at_every_level(configuration, where, path):
    """The check fails where kube-scheduler's strict decoding would (a misspelt key too)."""
    broken = copy.deepcopy(configuration)
    target = broken
    for step in where:
        target = target[step]
    target[path.rsplit(".", 1)[1]] = "x"
    assert unknown_fields(broken, CONFIGURATION) == [path]


def test_profile_opts_pods_in_by_scheduler_name(configuration):
    (profile,) = configuration["profiles"]
    assert profile["schedulerName"] == SCHEDULER_NAME == "metapolicy-scheduler"
    assert profile["percentageOfNodesToScore"] == 100  # every feasible node is a candidate


def test_extender_points_at_the_server(configuration, by_name, serve_deployment):
    (entry,) = configuration["extenders"]
    assert isinstance(entry["weight"], int) and not isinstance(entry["weight"], bool)
    assert all(isinstance(entry[k], bool) for k in ("nodeCacheCapable", "ignorable", "enableHTTPS"))
    extender = ExtenderConfig.from_dict(entry)
    url = urllib.parse.urlsplit(extender.url_prefix)
    service = by_name("Service", "metapolicy-serve")
    port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["extender"]
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "http",
        f"metapolicy-serve.{NAMESPACE}.svc",
        port,
        "/scheduler",
    )
    assert (extender.filter_verb, extender.prioritize_verb) == ("filter", "prioritize")
    assert extender.node_cache_capable and extender.ignorable and not entry["enableHTTPS"]
    # The policy's choice (TOP) leads every other node by TOP - RUNNER_UP points, which must
    # outweigh the spread of the default plugins' totals for a Deployment's pod: resource
    # plugins 0..200, default topology spreading 0..200 (weight 2), ImageLocality 0..100.
    assert (TOP - RUNNER_UP) * extender.score_factor() > 200 + 200 + 100
    # The timeout leaves the server room for its own budget, after which it answers itself.
    (container,) = serve_deployment["spec"]["template"]["spec"]["containers"]
    budget_ms = float(
        next(a for a in container["args"] if a.startswith("--budget-ms=")).split("=")[1]
    )
    assert 2 * budget_ms / 1000 <= extender.http_timeout_s <= 1.0
    assert parse_go_duration(entry["httpTimeout"]) == extender.http_timeout_s


def test_leader_election_on_its_own_lease(configuration, scheduler_objects):
    election = configuration["leaderElection"]
    assert election["leaderElect"] is True and election["resourceLock"] == "leases"
    assert election["resourceName"] == "metapolicy-scheduler" != "kube-scheduler"
    assert election["resourceNamespace"] == NAMESPACE
    (role,) = [o for o in scheduler_objects if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == election["resourceNamespace"]
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [election["resourceName"]],
            "verbs": ["get", "update"],
        }
    ]
    (binding,) = [
        o for o in scheduler_objects
        if o["kind"] == "RoleBinding" and o["roleRef"]["name"] == role["metadata"]["name"]
    ]  # fmt: skip
    assert binding["metadata"]["namespace"] == NAMESPACE and binding["subjects"] == [ACCOUNT]


def test_rbac_is_what_upstream_gives_a_second_scheduler(scheduler_objects):
    """ "Configure Multiple Schedulers" (kubernetes.io): system:kube-scheduler and
    system:volume-scheduler cluster-wide, the authentication reader in kube-system."""
    bound = {
        (o["kind"], o["metadata"].get("namespace"), o["roleRef"]["kind"], o["roleRef"]["name"])
        for o in scheduler_objects
        if o["kind"] in ("ClusterRoleBinding", "RoleBinding") and o["subjects"] == [ACCOUNT]
    }
    assert bound >= {
        ("ClusterRoleBinding", None, "ClusterRole", "system:kube-scheduler"),
        ("ClusterRoleBinding", None, "ClusterRole", "system:volume-scheduler"),
        ("RoleBinding", "kube-system", "Role", "extension-apiserver-authentication-reader"),
    }
    (account,) = [o for o in scheduler_objects if o["kind"] == "ServiceAccount"]
    assert {**account["metadata"], "kind": "ServiceAccount"} == ACCOUNT


def test_deployment_runs_the_stock_image_with_the_config(scheduler_deployment, config_map):
    spec = scheduler_deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    image, tag = container["image"].rsplit(":", 1)
    assert image == "registry.k8s.io/kube-scheduler" and tag.startswith("v1.3")
    (config_arg,) = [a for a in container["command"] if a.startswith("--config=")]
    (mount,) = container["volumeMounts"]
    assert config_arg == f"--config={mount['mountPath']}/config.yaml"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert pod["serviceAccountName"] == ACCOUNT["name"]
    assert "schedulerName" not in pod  # placed by the default scheduler
    assert spec["replicas"] == 2  # leader election: one active, one standby
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
        assert container[probe]["httpGet"]["port"] == "https"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_match_the_kubernetes_schema(scheduler_objects, version):
    for obj in scheduler_objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {error.message}")
        assert obj["kind"].startswith("Cluster") or obj["metadata"]["namespace"], obj


def test_kustomize_build_keeps_each_namespace(scheduler_objects):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS / "scheduler")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    built = list(yaml.safe_load_all(out.stdout))
    assert len(built) == len(scheduler_objects)
    for obj in built:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "metapolicy"
    namespaces = {(o["kind"], o["metadata"].get("namespace")) for o in built}
    assert ("RoleBinding", "kube-system") in namespaces
    assert ("Deployment", NAMESPACE) in namespaces
