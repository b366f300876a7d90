"""`metapolicy job run --input NS/NAME`: the training Job's command (see training_jobs.py).

Reads its input ConfigMap, the MetaPolicy and its store (the same workload resolution as the
operator), trains (initial training) or fine-tunes (from the stored zero-shot candidate), and
writes the weights to the result ConfigMap. It stores no version and moves no pointer: the
operator validates and decides. Errors are one line on stderr (and the termination message)
with exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes

from metapolicy.adapt import train_candidate
from metapolicy.checkpoint import policy_from_checkpoint, policy_weights, stored_record
from metapolicy.cluster import NodeProfile
from metapolicy.training import train_initial
from metapolicy_operator.config import api_client
from metapolicy_operator.configmap_store import LABEL_MANAGED_BY, MANAGED_BY
from metapolicy_operator.reporting import GROUP, PLURAL, VERSION
from metapolicy_operator.spec import parse_spec
from metapolicy_operator.stores import policy_store
from metapolicy_operator.training_jobs import INPUT_KEY, JobOutput, encode_output, owner_reference
from metapolicy_operator.workloads import resolve_workload, with_workload

TERMINATION_LOG = Path("/dev/termination-log")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="job_command", required=True)
    run = sub.add_parser("run", help="run one training Job's work (the operator creates it)")
    run.add_argument("--input", required=True, help="NAMESPACE/NAME of the input ConfigMap")
    run.add_argument("--kubeconfig", help="default: in-cluster, then $KUBECONFIG")


def work(api: kubernetes.client.ApiClient, namespace: str, name: str) -> None:
    core = kubernetes.client.CoreV1Api(api)
    job = json.loads(core.read_namespaced_config_map(name, namespace).data[INPUT_KEY])
    body = kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, job["policy"]
    )
    spec = parse_spec(body.get("spec"))
    store = policy_store(core, body, spec)
    spec = with_workload(spec, resolve_workload(spec, store))
    nodes = [NodeProfile.from_dict(n) for n in job["nodes"]]
    if job["kind"] == "train":
        trained = train_initial(nodes, spec.training)
        weights, meta = policy_weights(trained.policy)
        result: dict[str, Any] = {"record": trained.record().to_json()}
    else:
        backup = policy_from_checkpoint(store.load(job["backupVersion"]))
        start = stored_record(store.manifest(job["zeroShotVersion"])["meta"])
        settings = replace(spec.adaptation, strategy=job["strategy"], seed=job["seed"])
        done = train_candidate(backup, start, nodes, settings)
        weights, meta = policy_weights(done.candidate)
        result = {
            "seconds": done.seconds,
            "timings": done.timings,
            "selectedSteps": done.selected_steps,
        }
    output = encode_output(JobOutput(weights, meta, result))
    core.create_namespaced_config_map(namespace, {
        "metadata": {"name": job["result"], "namespace": namespace,
                     "labels": {LABEL_MANAGED_BY: MANAGED_BY},
                     "ownerReferences": [owner_reference(body)]},
        **output,
    })  # fmt: skip


def run(args: argparse.Namespace) -> int:
    namespace, _, name = args.input.partition("/")
    try:
        work(api_client(args.kubeconfig), namespace, name)
    except Exception as error:  # the Job fails with the reason; the operator retries
        message = f"metapolicy job: {type(error).__name__}: {error}".splitlines()[0]
        print(message, file=sys.stderr)
        with contextlib.suppress(OSError):  # not in a pod (e2e): stderr says it
            TERMINATION_LOG.write_text(message)
        return 1
    return 0
