"""SIGKILL the operator mid-adaptation; a new one converges and no checkpoint is lost."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import datetime

import pytest

from metapolicy.store import decode_checkpoint
from metapolicy_operator.configmap_store import MANIFEST_KEY, WEIGHTS_KEY, ConfigMapStore

pytestmark = pytest.mark.e2e


def test_a_killed_operator_resumes_from_the_store_and_converges(e2e_env, play):
    player = play("crash")  # the scenario waits for Adapting, kills, restarts, expects Ready
    status = player.status()
    name, namespace = player.policies[-1], player.namespace
    assert e2e_env.operator.starts == 2

    # The kill came mid-adaptation, and the adaptation that counts ran in the new operator.
    kill = next(r for r in player.results if r.kind == "kill-operator")
    assert "3 -> 6 nodes" in kill.summary, kill.summary
    restart = next(r for r in player.results if r.kind == "start-operator")
    record = status["history"][-1]
    began = datetime.fromisoformat(record["startedAt"].replace("Z", "+00:00"))
    assert began >= restart.started_at.replace(microsecond=0), (record, restart)

    # Every stored version is whole, and the active pointer names one of them.
    store = ConfigMapStore(e2e_env.kube.core, namespace, name)
    versions = store.versions()
    assert store.active() == status["activeVersion"] in versions, (store.active(), versions)
    for version in versions:
        store.load(version)  # raises CorruptCheckpointError on a torn or truncated write
    active = store.load(status["activeVersion"])
    assert sorted(active.meta["node_names"]) == [f"c-{i}" for i in range(1, 7)]

    # The same, decoded by hand from the ConfigMap: base64 -> gunzip -> safetensors.
    config_map = e2e_env.kube.core.read_namespaced_config_map(
        f"{name}-v{status['activeVersion']:06d}", namespace
    )
    weights = gzip.decompress(base64.b64decode(config_map.binary_data[WEIGHTS_KEY]))
    checkpoint = decode_checkpoint(weights, json.loads(config_map.data[MANIFEST_KEY]))
    assert checkpoint.meta["node_names"] == active.meta["node_names"]
