"""Policy <-> stored checkpoint. The manifest records the ordered node names and profiles so a
loaded policy knows which slot is which node, and what cluster it was scored on."""

from __future__ import annotations

from typing import Any

import torch

from metapolicy import compact
from metapolicy.cluster import NodeProfile
from metapolicy.policy import ARCHITECTURES, SlotPolicy
from metapolicy.record import AdaptationRecord
from metapolicy.store import Checkpoint, CorruptCheckpointError, tensor_bytes, tensors_from_bytes

# 2: the observation of features.py (only what a scheduler knows). Schema 1 policies read the
# true task durations and end times; they cannot be served honestly, so they are refused.
SCHEMA = 2


def policy_to_checkpoint(
    policy: SlotPolicy, record: AdaptationRecord | None = None, **meta: Any
) -> Checkpoint:
    """`record` is what produced these weights, stored in the same atomic write so that a crash
    can never leave a version without the story of how it was made; `meta` adds anything else.
    A big node-set's slot table is stored in int8 (`metapolicy.compact`)."""
    if record is not None:
        meta["record"] = record.to_json()
    tensors = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    return Checkpoint(
        tensors=compact.pack(tensors) if compact.compacts(policy) else tensors,
        meta={
            "schema": SCHEMA,
            **policy.config(),
            "slots": policy.size,
            "node_names": policy.slot_names,
            "nodes": [n.to_dict() for n in policy.nodes],
            **meta,
        },
    )


def policy_from_checkpoint(checkpoint: Checkpoint) -> SlotPolicy:
    meta = checkpoint.meta
    if meta.get("schema") != SCHEMA:
        raise CorruptCheckpointError(
            f"checkpoint schema {meta.get('schema')!r} is not {SCHEMA}: it was trained on an "
            "observation this version no longer builds; train a new policy"
        )
    try:
        cls = ARCHITECTURES[meta["architecture"]]
        nodes = [NodeProfile.from_dict(n) for n in meta["nodes"]]
        if [n.name for n in nodes] != meta["node_names"]:
            raise ValueError("node_names disagree with nodes")
        policy = cls(nodes, int(meta["hidden"]))
        tensors = compact.unpack(dict(checkpoint.tensors))
        policy.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()})
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        raise CorruptCheckpointError(f"cannot rebuild the policy: {error}") from error
    return policy


def policy_weights(policy: SlotPolicy) -> tuple[bytes, dict]:
    """(safetensors bytes, checkpoint meta): how a policy crosses a process or Job boundary,
    never pickled."""
    checkpoint = policy_to_checkpoint(policy)
    return tensor_bytes(checkpoint.tensors), checkpoint.meta


def policy_from_weights(weights: bytes, meta: dict) -> SlotPolicy:
    """The inverse of `policy_weights`."""
    return policy_from_checkpoint(Checkpoint(tensors=tensors_from_bytes(weights), meta=meta))


def stored_record(meta: dict) -> AdaptationRecord | None:
    """The record a version was stored with, if any."""
    data = meta.get("record")
    return AdaptationRecord.from_json(data) if isinstance(data, dict) else None
