import pytest

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
