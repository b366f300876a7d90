"""Where the policy trains: auto, cpu or cuda, with a clear error for a missing GPU."""

import pytest
import torch

from metapolicy.adapt import AdaptationSettings, Trained, train_candidate, zero_shot
from metapolicy.cluster import make_cluster, resize_cluster
from metapolicy.device import DeviceUnavailable, device_problem, resolve_device
from metapolicy.policy import make_policy
from metapolicy.training import TrainingSettings, train_initial


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_the_cpu_without_a_gpu(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert device_problem("auto") is None


def test_auto_is_the_gpu_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")


def test_cuda_without_a_gpu_is_a_clear_error_naming_the_setting(no_gpu):
    with pytest.raises(DeviceUnavailable, match=r"spec\.training\.device=cuda.*no CUDA GPU"):
        resolve_device("cuda", "spec.training.device")
    assert isinstance(DeviceUnavailable("x"), ValueError)


def test_an_unknown_device_is_refused():
    with pytest.raises(DeviceUnavailable, match=r"tpu.*auto, cpu, cuda"):
        resolve_device("tpu")


def test_training_asks_for_the_device_before_any_work(no_gpu, workload):
    settings = TrainingSettings(steps=1024, hidden=16, device="cuda", workload=workload)
    with pytest.raises(DeviceUnavailable, match=r"training\.device=cuda"):
        train_initial(make_cluster(4), settings)


def test_fine_tune_asks_for_it_too_and_zero_shot_never_needs_it(no_gpu, workload):
    nodes = make_cluster(4)
    backup = make_policy("node-set", nodes, hidden=16)
    settings = AdaptationSettings(budget_steps=1024, episodes=2, device="cuda", workload=workload)
    stage = zero_shot(backup, resize_cluster(nodes, 1), settings)  # validation runs on the CPU
    with pytest.raises(DeviceUnavailable, match=r"adaptation\.device=cuda"):
        train_candidate(backup, stage.record, stage.candidate.nodes, settings)


def test_cpu_training_leaves_the_policy_on_the_cpu(no_gpu, workload):
    settings = TrainingSettings(
        steps=1024, hidden=16, device="cpu", workload=workload, select_episodes=2, episodes=2
    )
    result = train_initial(make_cluster(4), settings)
    assert result.policy.device == torch.device("cpu")
    nodes = result.policy.nodes
    adapt = AdaptationSettings(budget_steps=1024, episodes=2, device="auto", workload=workload)
    stage = zero_shot(result.policy, resize_cluster(nodes, 1), adapt)
    trained = train_candidate(result.policy, stage.record, stage.candidate.nodes, adapt)
    assert isinstance(trained, Trained) and trained.candidate.device == torch.device("cpu")


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
def test_the_whole_path_on_a_device(workload, device):
    """PPO, selection and distillation on sub-clusters, on the device (the GPU
    where torch sees one, never in CI), handing back a CPU policy that stores and serves."""
    nodes = make_cluster(40, seed=2)
    settings = TrainingSettings(
        steps=2048, hidden=16, device=device, max_nodes=60, subcluster=16, workload=workload,
        select_episodes=2, episodes=2, imitate_below=0,
    )  # fmt: skip
    result = train_initial(nodes, settings)
    assert result.policy.device == torch.device("cpu")
    adapt = AdaptationSettings(
        budget_steps=2048, episodes=2, device=device, max_nodes=60, subcluster=16,
        strategy="knowledge_distillation", distill_steps=256, workload=workload,
    )  # fmt: skip
    stage = zero_shot(result.policy, resize_cluster(nodes, 3), adapt)
    trained = train_candidate(result.policy, stage.record, stage.candidate.nodes, adapt)
    assert trained.candidate.device == torch.device("cpu")
    assert result.policy.device == torch.device("cpu")
