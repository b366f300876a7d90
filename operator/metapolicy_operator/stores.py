"""A MetaPolicy's checkpoint store, as its spec asks for it: ConfigMaps next to the policy, or
a directory (a PersistentVolumeClaim) per policy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import kubernetes

from metapolicy.store import CheckpointStore, FilesystemStore
from metapolicy_operator.configmap_store import ConfigMapStore
from metapolicy_operator.spec import PolicySpec


def policy_store(
    core: kubernetes.client.CoreV1Api, body: Mapping, spec: PolicySpec
) -> CheckpointStore:
    meta = body["metadata"]
    if spec.storage_backend == "filesystem":
        root = Path(spec.storage_path) / meta["namespace"] / meta["name"]
        return FilesystemStore(root, keep=spec.keep_versions)
    return ConfigMapStore(
        core, meta["namespace"], meta["name"], owner=body, keep=spec.keep_versions
    )
