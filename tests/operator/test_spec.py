from pathlib import Path

import pytest
import torch
import yaml

from metapolicy_operator.crd_schema import leaf_defaults
from metapolicy_operator.spec import DEFAULTS, InvalidSpec, parse_spec, with_defaults

ROOT = Path(__file__).resolve().parents[2]
INVERTED_CPU_RANGE = {"name": "a", "weight": 1, "cpu": {"min": 2, "max": 1}}


def test_code_defaults_equal_the_crd_defaults():
    crd = yaml.safe_load((ROOT / "crds/metapolicy.yaml").read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    # the repository's CRD file against what the operator loaded from its packaged copy
    assert leaf_defaults(spec_schema) == DEFAULTS


@pytest.mark.parametrize("path", sorted((ROOT / "manifests/examples").glob("*.yaml")))
def test_examples_parse(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "MetaPolicy":
            parsed = parse_spec(doc.get("spec"))
            assert parsed.max_nodes >= 1


def test_empty_spec_gets_every_default():
    parsed = parse_spec({})
    assert parsed.architecture == "node-set" and parsed.max_nodes == 20
    assert parsed.adaptation.budget_steps == 50_000 and parsed.adaptation.min_retention == 0.9
    assert parsed.training.steps == 300_000 and parsed.settle_seconds == 10
    assert parsed.storage_backend == "configmap" and parsed.storage_path is None


def test_training_budget_defaults_by_architecture():
    assert parse_spec({"architecture": "slot-mlp"}).training.steps == 1_000_000
    assert parse_spec({"architecture": "node-set"}).training.steps == 300_000
    explicit = {"architecture": "slot-mlp", "training": {"budgetSteps": 5_000}}
    assert parse_spec(explicit).training.steps == 5_000


def test_defaults_fill_only_absent_fields():
    merged = with_defaults({"adaptation": {"budgetSteps": 7}, "maxNodes": 3})
    assert merged["adaptation"]["budgetSteps"] == 7
    assert merged["adaptation"]["settleSeconds"] == 10
    assert merged["maxNodes"] == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"maxNodes": 0}, r"spec.maxNodes=0 is outside"),
        ({"maxNodes": "ten"}, r"spec.maxNodes='ten' is not a number"),
        ({"hiddenSize": 64.5}, r"spec.hiddenSize=64.5 must be a whole number"),
        ({"architecture": "transformer"}, r"spec.architecture='transformer' is not one of"),
        ({"strategy": "magic"}, r"spec.strategy='magic' is not one of"),
        ({"adaptation": {"freeze": "all"}}, r"spec.adaptation.freeze='all' is not one of"),
        ({"validation": {"minRetention": float("nan")}}, r"minRetention=nan is not a number"),
        ({"workload": {"load": 5}}, r"spec.workload.load=5 is outside"),
        ({"workload": []}, r"spec.workload must be an object"),
        ({"storage": {"backend": "filesystem"}}, r"spec.storage.path is required"),
        ({"storage": {"path": "/x"}}, r"only allowed with spec.storage.backend filesystem"),
        (
            {
                "workload": {
                    "taskClasses": [{"name": "a", "weight": 1, "cpu": {"min": 2, "max": 1}}]
                }
            },
            r"taskClasses\[0\]: a.cpu range",
        ),
        ({"nodeSelector": "zone=a"}, r"spec.nodeSelector must be a label selector"),
    ],
)
def test_bad_specs_name_the_field(spec, message):
    with pytest.raises(InvalidSpec, match=message):
        parse_spec(spec)


def test_max_nodes_reaches_5000_for_node_set_and_256_for_slot_mlp():
    assert parse_spec({"maxNodes": 5000}).adaptation.max_nodes == 5000
    assert parse_spec({"architecture": "slot-mlp", "maxNodes": 256}).training.max_nodes == 256
    with pytest.raises(InvalidSpec, match=r"spec\.maxNodes=5001 is outside \[1, 5000\]"):
        parse_spec({"maxNodes": 5001})
    with pytest.raises(InvalidSpec, match=r"spec\.maxNodes=300 exceeds 256.*slot-mlp"):
        parse_spec({"architecture": "slot-mlp", "maxNodes": 300})


def test_training_device_reaches_training_and_fine_tuning(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    parsed = parse_spec({})
    assert parsed.training.device == parsed.adaptation.device == "auto"
    assert parse_spec({"training": {"device": "cpu"}}).adaptation.device == "cpu"
    with pytest.raises(InvalidSpec, match=r"spec\.training\.device='tpu' is not one of auto"):
        parse_spec({"training": {"device": "tpu"}})


def test_cuda_without_a_gpu_is_an_invalid_spec_unless_a_job_trains(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidSpec, match=r"spec\.training\.device=cuda, but torch sees no"):
        parse_spec({"training": {"device": "cuda"}})
    job = parse_spec({"training": {"device": "cuda", "backend": "job"}})
    assert job.training.device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_spec({"training": {"device": "cuda"}}).training.device == "cuda"


def test_the_librarys_own_defaults_are_the_crds():
    """The library (and the command line, which reads them from the library's settings) keep
    defaults of their own for use without Kubernetes: they must be the CRD's."""
    from metapolicy.adapt import AdaptationSettings
    from metapolicy.training import TrainingSettings
    from metapolicy.workload import WorkloadSpec

    adaptation, training, workload = AdaptationSettings(), TrainingSettings(), WorkloadSpec()
    crd = DEFAULTS
    assert (
        adaptation.strategy, adaptation.budget_steps, adaptation.freeze, adaptation.episodes,
        adaptation.min_retention, adaptation.on_inconclusive, adaptation.rollback,
        adaptation.max_nodes, adaptation.seed,
    ) == (
        crd["strategy"], crd["adaptation"]["budgetSteps"], crd["adaptation"]["freeze"],
        crd["validation"]["episodes"], crd["validation"]["minRetention"],
        crd["validation"]["onInconclusive"], crd["validation"]["rollback"]["enabled"],
        crd["maxNodes"], crd["training"]["seed"],
    )  # fmt: skip
    assert (training.architecture, training.hidden, training.max_nodes, training.device) == (
        crd["architecture"], crd["hiddenSize"], crd["maxNodes"], crd["training"]["device"]
    )  # fmt: skip
    w = crd["workload"]
    assert (
        workload.load, workload.burst_factor, workload.burst_probability, workload.burst_length,
        workload.episode_tasks,
    ) == (
        w["load"], w["burstFactor"], w["burstProbability"], w["burstLength"], w["episodeTasks"],
    )  # fmt: skip
