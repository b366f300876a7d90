"""The kustomize base in manifests/: it parses, validates against the Kubernetes API schemas,
builds with kustomize, and runs the operator the way the README and the brief say.

Built-in kinds are validated by kubernetes-validate (the API's OpenAPI schemas, bundled, strict:
unknown fields fail). ServiceMonitor and PrometheusRule are Prometheus Operator custom
resources whose schemas it does not have, so they are checked structurally here; the rule
groups themselves are checked by promtool (test_alerts.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from metapolicy_operator.main import add_arguments

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"

#: The oldest Kubernetes minor we claim to support, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.28", kubernetes_validate.latest_version())
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
NAMESPACE = "metapolicy-system"


def test_resources_exist_and_parse(kustomization):
    for name in kustomization["resources"]:
        docs = [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
        assert docs, f"{name} holds no object"
        assert all({"apiVersion", "kind", "metadata"} <= d.keys() for d in docs), name
    for generator in kustomization["configMapGenerator"]:
        for name in generator["files"]:
            assert (MANIFESTS / name).is_file(), name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_objects_match_the_kubernetes_schema(objects, version):
    builtin = [o for o in objects if o["kind"] not in CUSTOM_KINDS]
    assert {o["kind"] for o in builtin} >= {"Namespace", "Deployment", "ClusterRole", "Service"}
    for obj in builtin:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {error.message}")


#: Each component's Service, its ports (name -> port), and the Deployment behind it.
COMPONENTS = {
    "metapolicy-operator": {"metrics": 8080},
    "metapolicy-serve": {"extender": 8090, "metrics": 8091},
}


@pytest.mark.parametrize("name", COMPONENTS)
def test_service_monitor_scrapes_the_service(by_name, name):
    monitor = by_name("ServiceMonitor", name)
    service = by_name("Service", name)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s"}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == COMPONENTS[name]


def test_one_service_monitor_per_component(by_kind):
    assert sorted(m["metadata"]["name"] for m in by_kind("ServiceMonitor")) == sorted(COMPONENTS)


def test_prometheus_rule_shape(by_kind):
    (rule,) = by_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and isinstance(group["name"], str)
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert isinstance(r["expr"], str)
            texts = {**r.get("labels", {}), **r["annotations"]}
            assert all(isinstance(v, str) for v in texts.values())


@pytest.mark.parametrize("name", COMPONENTS)
def test_service_selects_the_components_pods(by_name, name):
    service, deployment = by_name("Service", name), by_name("Deployment", name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert {"app.kubernetes.io/name": name}.items() <= pod_labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert ports[port["targetPort"]] == port["port"], port


def test_operator_command(deployment):
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/metapolicy/operator:0.1.0"
    assert "command" not in container  # the image's ENTRYPOINT, `metapolicy run` (Dockerfile)
    args = container["args"]
    assert args[:3] == ["--all-namespaces", "--metrics-port=8080", "--log-format=json"]
    assert "--workers=2" in args
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("metrics", 8080)]
    # One operator, never two at once (no lock without peering): no rolling update.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_operator_arguments_are_accepted_by_the_cli(deployment):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = parser.parse_args(container["args"])
    assert (args.all_namespaces, args.metrics_port, args.log_format) == (True, 8080, "json")
    assert args.workers == 2 and args.peering is None  # standalone


@pytest.mark.parametrize("name", COMPONENTS)
def test_pod_is_locked_down(by_name, name):
    deployment = by_name("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == security["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["serviceAccountName"] == name
    # The only writable path: /tmp on an emptyDir.
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]


def test_probes_and_resources(deployment):
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "3Gi"},
    }


def test_namespace_enforces_the_restricted_pod_security_standard(by_kind):
    (namespace,) = by_kind("Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_kustomize_build(dashboard):
    """What `kubectl apply -k manifests/` applies (kubectl's built-in kustomize, offline)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    built = list(yaml.safe_load_all(out.stdout))
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for obj in built:
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/part-of"] == "metapolicy", meta["name"]
        if obj["kind"] not in cluster_scoped:
            assert meta["namespace"] == NAMESPACE, f"{obj['kind']}/{meta['name']}"
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
    (config_map,) = [o for o in built if o["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"] == "metapolicy-dashboard"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["metapolicy-dashboard.json"]) == dashboard
