import pytest
import torch

from metapolicy.cluster import NodeProfile, make_cluster
from metapolicy.policy import make_policy
from metapolicy.workload import WorkloadSpec

# Short episodes keep the suite fast; every behaviour under test shows up within 64 tasks.
SHORT = WorkloadSpec(episode_tasks=64)


@pytest.fixture
def workload() -> WorkloadSpec:
    return SHORT


@pytest.fixture
def nodes() -> list[NodeProfile]:
    return make_cluster(6, seed=3)


@pytest.fixture(params=["node-set", "slot-mlp"])
def policy(request, nodes):
    return make_policy(request.param, nodes, hidden=16, seed=0)


@pytest.fixture
def scrambled(policy):
    """Random non-zero weights everywhere, so a test cannot pass on an untrained zero table."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    return policy
