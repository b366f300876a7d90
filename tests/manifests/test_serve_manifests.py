"""The placement server's Deployment, Service and PodDisruptionBudget in manifests/: it runs
`metapolicy serve` the way its command line understands, where the scheduler's extender
configuration and the probes expect it, and it survives a node drain or an update."""

from __future__ import annotations

import argparse
import urllib.parse

from e2e.extender import shipped_extender
from metapolicy_operator.serving.command import add_arguments, options_from
from metapolicy_operator.serving.server import FILTER_PATH, PRIORITIZE_PATH

NAME = "metapolicy-serve"


def container(deployment):
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return found


def test_command_is_the_serve_subcommand_with_accepted_arguments(serve_deployment):
    serve = container(serve_deployment)
    assert serve["command"] == ["metapolicy", "serve"]  # the image's ENTRYPOINT is `run`
    assert serve["image"] == "ghcr.io/metapolicy/operator:0.1.0"  # the operator's image
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(serve["args"])
    assert (args.log_format, args.workers) == ("json", 1)
    options = options_from(args)
    assert options.namespaces == ()  # every namespace: MetaPolicies may live anywhere
    ports = {p["name"]: p["containerPort"] for p in serve["ports"]}
    assert (options.port, options.metrics_port) == (ports["extender"], ports["metrics"])
    assert options.host == "0.0.0.0"
    assert options.budget_s == 0.030


def test_the_scheduler_calls_the_verbs_the_server_serves(by_name):
    extender = shipped_extender()
    service = by_name("Service", NAME)
    url = urllib.parse.urlsplit(extender.url_prefix)
    assert url.hostname.split(".")[0] == service["metadata"]["name"]
    assert f"{url.path}/{extender.filter_verb}" == FILTER_PATH
    assert f"{url.path}/{extender.prioritize_verb}" == PRIORITIZE_PATH


def test_probes_ask_the_extender_port(serve_deployment):
    serve = container(serve_deployment)
    assert serve["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "extender"}
    assert serve["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "extender"}


def test_two_replicas_never_fewer_during_an_update(serve_deployment):
    spec = serve_deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert "schedulerName" not in pod  # the default scheduler places the extender itself
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_a_drain_leaves_one_replica(by_name, serve_deployment):
    budget = by_name("PodDisruptionBudget", NAME)
    assert budget["spec"]["minAvailable"] == 1
    pod_labels = serve_deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_resources(serve_deployment):
    resources = container(serve_deployment)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}
