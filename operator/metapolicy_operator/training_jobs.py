"""Training in a Kubernetes Job (spec.training.backend: job), for users who outgrow the
operator's pod: a GPU node, more memory, a big cluster's initial training.

The operator writes the job's input to a ConfigMap, creates a Job owned by the MetaPolicy that
runs `metapolicy job run --input NS/NAME` (see job_command.py) with the spec's image, resources,
node selector and tolerations, polls the Job's conditions, and reads the trained weights back
from the result ConfigMap the Job writes. The Job only trains: the zero-shot stage, validation
and the promote or rollback decision stay in the operator, and nothing the Job does can change
the serving version. A Job that fails, runs past its deadline or is deleted raises
`TrainingJobFailed`; the controller records it and retries with backoff.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from metapolicy_operator.configmap_store import LABEL_MANAGED_BY, LABEL_POLICY, MANAGED_BY
from metapolicy_operator.spec import TrainingJob

log = logging.getLogger(__name__)

LABEL_JOB_KIND = "metapolicy.dev/job-kind"
INPUT_KEY, META_KEY, RESULT_KEY, WEIGHTS_KEY = (
    "input.json",
    "meta.json",
    "result.json",
    "weights.safetensors.gz",
)
KINDS = ("train", "fine-tune")
POLL_SECONDS = 1.0
GRACE_SECONDS = 60.0  # past the Job's own activeDeadlineSeconds: the Job controller is late


class TrainingJobFailed(Exception):
    """The Job failed, ran past its deadline or was deleted; the message says which."""


@dataclass(frozen=True)
class JobOutput:
    weights: bytes  # safetensors
    meta: dict[str, Any]  # checkpoint meta of the trained policy
    result: dict[str, Any]  # train: {"record": ...}; fine-tune: {"seconds", "timings", ...}


def result_name(job: str) -> str:
    return f"{job}-result"


def encode_output(output: JobOutput) -> dict[str, dict[str, str]]:
    """The result ConfigMap's data and binaryData."""
    packed = base64.b64encode(gzip.compress(output.weights, mtime=0)).decode("ascii")
    data = {META_KEY: json.dumps(output.meta), RESULT_KEY: json.dumps(output.result)}
    return {"data": data, "binaryData": {WEIGHTS_KEY: packed}}


def decode_output(config_map: Any) -> JobOutput:
    try:
        weights = gzip.decompress(base64.b64decode(config_map.binary_data[WEIGHTS_KEY]))
        meta = json.loads(config_map.data[META_KEY])
        result = json.loads(config_map.data[RESULT_KEY])
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise TrainingJobFailed(f"the Job's result is unreadable: {error!r}") from None
    return JobOutput(weights, meta, result)


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion") or "metapolicy.dev/v1alpha1",
        "kind": owner.get("kind") or "MetaPolicy",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_body(
    name: str, owner: Mapping[str, Any], kind: str, job: TrainingJob, image: str, input_name: str
) -> dict[str, Any]:
    """A batch/v1 Job running `metapolicy job run` once (the operator retries, not the Job)."""
    meta = owner["metadata"]
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_POLICY: meta["name"][:63],
        LABEL_JOB_KIND: kind,
    }
    container = {
        "name": "train",
        "image": image,
        "command": ["metapolicy", "job", "run", "--input", f"{meta['namespace']}/{input_name}"],
        "resources": dict(job.resources),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod = {
        "restartPolicy": "Never",
        "serviceAccountName": job.service_account,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if job.node_selector:
        pod["nodeSelector"] = dict(job.node_selector)
    if job.tolerations:
        pod["tolerations"] = [dict(t) for t in job.tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": job.deadline_seconds,
            "ttlSecondsAfterFinished": 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def job_state(job: Any) -> tuple[str, str]:
    """("running" | "complete" | "failed", why) from a Job's status conditions."""
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.status != "True":
            continue
        if condition.type == "Complete":
            return "complete", ""
        if condition.type == "Failed":
            return "failed", f"{condition.reason}: {condition.message or ''}".rstrip(": ")
    return "running", ""


class JobRunner:
    """Runs one training step of one MetaPolicy as a Job and waits for it."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        owner: Mapping[str, Any],
        job: TrainingJob,
        default_image: str | None,
    ) -> None:
        self.core = kubernetes.client.CoreV1Api(api)
        self.batch = kubernetes.client.BatchV1Api(api)
        self.owner = owner
        self.namespace = owner["metadata"]["namespace"]
        self.job = job
        self.image = job.image or default_image

    async def run(self, kind: str, payload: dict[str, Any], cancel=None) -> JobOutput | None:
        """The Job's output; None if `cancel.requested()` turned true meanwhile (the Job is
        deleted). Raises TrainingJobFailed."""
        if not self.image:
            raise TrainingJobFailed(
                "no image for the training Job: set spec.training.job.image, or the operator's "
                "METAPOLICY_JOB_IMAGE"
            )
        policy = self.owner["metadata"]["name"]
        name = f"{policy[:40].rstrip('-.')}-{kind}-{secrets.token_hex(3)}"
        input_name = f"{name}-input"
        await self._call(self.core.create_namespaced_config_map, self.namespace, {
            "metadata": {"name": input_name, "namespace": self.namespace,
                         "labels": {LABEL_MANAGED_BY: MANAGED_BY},
                         "ownerReferences": [owner_reference(self.owner)]},
            "data": {INPUT_KEY: json.dumps(payload | {"kind": kind, "result": result_name(name)})},
        })  # fmt: skip
        body = job_body(name, self.owner, kind, self.job, self.image, input_name)
        try:
            await self._call(self.batch.create_namespaced_job, self.namespace, body)
            log.info("%s/%s: training Job %s created", self.namespace, policy, name)
            return await self._wait(name, cancel)
        finally:
            await self._delete(self.batch.delete_namespaced_job, name, propagation="Background")
            for config_map in (input_name, result_name(name)):
                await self._delete(self.core.delete_namespaced_config_map, config_map)

    async def _wait(self, name: str, cancel) -> JobOutput | None:
        deadline = time.monotonic() + self.job.deadline_seconds + GRACE_SECONDS
        while True:
            if cancel is not None and cancel.requested():
                return None
            try:
                job = await self._call(self.batch.read_namespaced_job, name, self.namespace)
            except ApiException as error:
                if error.status == 404:
                    raise TrainingJobFailed(f"training Job {name} was deleted") from None
                raise
            state, why = job_state(job)
            if state == "complete":
                config_map = await self._call(
                    self.core.read_namespaced_config_map, result_name(name), self.namespace
                )
                return decode_output(config_map)
            if state == "failed":
                raise TrainingJobFailed(f"training Job {name} failed ({why})")
            if time.monotonic() > deadline:
                raise TrainingJobFailed(
                    f"training Job {name} ran past its deadline of {self.job.deadline_seconds}s"
                )
            await asyncio.sleep(POLL_SECONDS)  # polling the Job's status, not a fixed wait

    async def _call(self, method, *args, **kwargs):
        return await asyncio.to_thread(method, *args, **kwargs)

    async def _delete(self, method, name: str, propagation: str | None = None) -> None:
        kwargs = {"propagation_policy": propagation} if propagation else {}
        try:
            await self._call(method, name, self.namespace, **kwargs)
        except ApiException as error:
            if error.status != 404:
                log.warning("cannot delete %s: %s", name, error.reason)
