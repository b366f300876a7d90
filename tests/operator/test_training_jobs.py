"""The training Job the operator creates (spec.training.backend: job), and its result."""

from __future__ import annotations

from types import SimpleNamespace

from metapolicy_operator.spec import parse_spec
from metapolicy_operator.training_jobs import (
    JobOutput,
    decode_output,
    encode_output,
    job_body,
    job_state,
)

OWNER = {
    "apiVersion": "metapolicy.dev/v1alpha1",
    "kind": "MetaPolicy",
    "metadata": {"name": "gpu", "namespace": "ml", "uid": "u-1"},
}


def test_the_job_runs_once_as_the_spec_says_and_belongs_to_the_policy():
    spec = parse_spec({
        "training": {"backend": "job", "job": {
            "image": "registry/mp:1", "deadlineSeconds": 900,
            "resources": {"limits": {"nvidia.com/gpu": 1}},
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }},
    })  # fmt: skip
    assert spec.training_backend == "job"
    body = job_body("gpu-train-abc", OWNER, "train", spec.training_job, "registry/mp:1", "in")
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert body["spec"]["backoffLimit"] == 0  # the operator retries, with backoff
    assert body["spec"]["activeDeadlineSeconds"] == 900
    pod = body["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "metapolicy-trainer"
    assert pod["nodeSelector"] == {"gpu": "a100"} and pod["tolerations"][0]["key"] == "gpu"
    (container,) = pod["containers"]
    assert container["command"] == ["metapolicy", "job", "run", "--input", "ml/in"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_job_states_from_conditions():
    def job(*conditions):
        return SimpleNamespace(status=SimpleNamespace(conditions=[
            SimpleNamespace(type=t, status=s, reason=r, message=m) for t, s, r, m in conditions
        ]))  # fmt: skip

    assert job_state(SimpleNamespace(status=None)) == ("running", "")
    assert job_state(job(("Complete", "True", None, None))) == ("complete", "")
    state, why = job_state(job(("Failed", "True", "DeadlineExceeded", "too slow")))
    assert state == "failed" and why == "DeadlineExceeded: too slow"
    assert job_state(job(("Failed", "False", "x", "y")))[0] == "running"


def test_the_result_round_trips_through_a_config_map():
    output = JobOutput(b"\x00weights", {"node_names": ["a"]}, {"seconds": 1.5})
    encoded = encode_output(output)
    config_map = SimpleNamespace(data=encoded["data"], binary_data=encoded["binaryData"])
    assert decode_output(config_map) == output


class FakeBatch:
    """A Job API whose Job stays running, or is gone."""

    def __init__(self, gone: bool = False) -> None:
        self.gone = gone
        self.deleted: list[str] = []

    def create_namespaced_job(self, namespace, body):
        return body

    def read_namespaced_job(self, name, namespace):
        from kubernetes.client.exceptions import ApiException

        if self.gone:
            raise ApiException(status=404, reason="Not Found")
        return SimpleNamespace(status=SimpleNamespace(conditions=[]))

    def delete_namespaced_job(self, name, namespace, **_):
        self.deleted.append(name)


class FakeCore:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.deleted: list[str] = []

    def create_namespaced_config_map(self, namespace, body):
        self.created.append(body["metadata"]["name"])

    def delete_namespaced_config_map(self, name, namespace, **_):
        self.deleted.append(name)


def runner(batch, deadline: int = 3600):
    from metapolicy_operator.spec import TrainingJob
    from metapolicy_operator.training_jobs import JobRunner

    job = JobRunner.__new__(JobRunner)
    job.core, job.batch, job.owner, job.namespace = FakeCore(), batch, OWNER, "ml"
    job.job, job.image = TrainingJob(deadline_seconds=deadline), "registry/mp:1"
    return job


async def test_a_deleted_or_hung_job_fails_clearly_and_everything_is_cleaned_up(monkeypatch):
    import pytest

    from metapolicy_operator import training_jobs

    monkeypatch.setattr(training_jobs, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(training_jobs, "GRACE_SECONDS", 0.0)
    gone = runner(FakeBatch(gone=True))
    with pytest.raises(training_jobs.TrainingJobFailed, match="was deleted"):
        await gone.run("train", {"policy": "gpu", "nodes": []})
    hung = runner(FakeBatch(), deadline=0)
    with pytest.raises(training_jobs.TrainingJobFailed, match="past its deadline of 0s"):
        await hung.run("fine-tune", {"policy": "gpu", "nodes": []})
    assert len(hung.batch.deleted) == 1  # the hung Job is deleted
    assert hung.core.deleted == [
        f"{hung.batch.deleted[0]}-input",
        f"{hung.batch.deleted[0]}-result",
    ]


async def test_a_cancelled_job_is_deleted_and_returns_nothing(monkeypatch):
    from metapolicy_operator import training_jobs

    monkeypatch.setattr(training_jobs, "POLL_SECONDS", 0.01)
    job = runner(FakeBatch())
    cancel = SimpleNamespace(requested=lambda: True)
    assert await job.run("fine-tune", {"policy": "gpu", "nodes": []}, cancel) is None
    assert job.batch.deleted and job.core.created == [f"{job.batch.deleted[0]}-input"]
