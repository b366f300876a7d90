"""Resize strategies: give a policy exactly one slot per node of a new node set.

Slots of nodes that left are removed (by name, wherever they sit); surviving slots keep their
weights and order; slots for nodes that joined are appended. A strategy only decides how a new
slot's weights start, as a mix of the old slots' weights (departed nodes included: a node that
replaces a similar one inherits what was learned about it):

- `zero_padding`: what the network reads about the new node starts at zero (for `node-set`:
  no node-specific bias, the shared encoder judges it on its features alone) and its decision
  row starts at the mean of the surviving rows, so it starts neither dominant nor starved: a
  zero row would give it logit 0 while the others sit at whatever offset training left them.
- `weight_interpolation`: slots are ordered by capacity (cpu/16 + memory/64 GiB); a new node's
  weights are interpolated linearly between the old slots just below and above its capacity
  (ties averaged; beyond either end, the nearest end is copied).
- `attention_based`: softmax attention over old slots, scored by the negative squared distance
  between node profiles (cpu, memory, latency, normalised); temperature `ATTENTION_TEMPERATURE`.
- `knowledge_distillation`: starts like `attention_based`; the adaptation pipeline then
  distils the backup (teacher, in masked mode on the new cluster) into the whole network
  (see `distill.py`) before fine-tuning.

Property kept by every strategy at resize time: with the new slots masked, the resized
policy's action distribution over the old nodes equals the old policy's on the same state
(masked slots are invisible to `node-set`'s pooling and read as zeros by `slot-mlp`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from metapolicy.cluster import NodeProfile, check_unique
from metapolicy.features import CPU_REF, LATENCY_REF, MEMORY_REF
from metapolicy.policy import SlotPolicy, SlotTensor

STRATEGIES = ("zero_padding", "weight_interpolation", "knowledge_distillation", "attention_based")
# Cheapest first; a rollback moves one step up. Distillation is last: it is the only one that
# trains the whole network on the new cluster before fine-tuning.
ESCALATION = ("zero_padding", "weight_interpolation", "attention_based", "knowledge_distillation")
ATTENTION_TEMPERATURE = 0.05  # same-tier nodes differ by ~0.01 in profile distance, tiers by >0.25


class UnknownStrategy(ValueError):
    pass


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise UnknownStrategy(
            f"unknown strategy {name!r}; choose from auto, {', '.join(STRATEGIES)}"
        )
    return name


def changed_slots(old: Sequence[str], new: Sequence[str]) -> tuple[list[str], list[str]]:
    """(added, removed) node names, in the order they appear."""
    old_set, new_set = set(old), set(new)
    return [n for n in new if n not in old_set], [n for n in old if n not in new_set]


def choose_strategy(old: Sequence[str], new: Sequence[str], override: str = "auto") -> str:
    """The background design's table on the number of changed slots (added + removed):
    1-2 zero padding, 3-5 interpolation, 6-10 distillation, more than 10 attention."""
    if override != "auto":
        return check_strategy(override)
    added, removed = changed_slots(old, new)
    delta = len(added) + len(removed)
    if delta <= 2:
        return "zero_padding"
    if delta <= 5:
        return "weight_interpolation"
    if delta <= 10:
        return "knowledge_distillation"
    return "attention_based"


def escalate(strategy: str) -> str:
    """The next, stronger strategy after a rollback (the strongest stays)."""
    index = ESCALATION.index(check_strategy(strategy))
    return ESCALATION[min(index + 1, len(ESCALATION) - 1)]


# ----- mixing matrices: rows = new slots, columns = old slots ----------------------------------
def _profile(nodes: Sequence[NodeProfile]) -> np.ndarray:
    return np.array(
        [[n.cpu / CPU_REF, n.memory_mib / MEMORY_REF, n.latency_ms / LATENCY_REF] for n in nodes]
    )


def capacity_key(node: NodeProfile) -> float:
    return node.cpu / CPU_REF + node.memory_mib / MEMORY_REF


def interpolation_mix(old: Sequence[NodeProfile], added: Sequence[NodeProfile]) -> np.ndarray:
    keys = np.array([capacity_key(n) for n in old])
    levels = np.unique(keys)
    mix = np.zeros((len(added), len(old)))
    for row, node in enumerate(added):
        key = capacity_key(node)
        below, above = levels[levels <= key], levels[levels >= key]
        low = below.max() if below.size else levels.min()
        high = above.min() if above.size else levels.max()
        share_high = 0.0 if high == low else (key - low) / (high - low)
        for level, share in ((low, 1 - share_high), (high, share_high)):
            members = keys == level
            mix[row, members] += share / members.sum()
    return mix


def attention_mix(old: Sequence[NodeProfile], added: Sequence[NodeProfile]) -> np.ndarray:
    distance = ((_profile(added)[:, None] - _profile(old)[None]) ** 2).sum(-1)
    scores = -distance / ATTENTION_TEMPERATURE
    scores -= scores.max(1, keepdims=True)
    weights = np.exp(scores)
    return weights / weights.sum(1, keepdims=True)


def _mix_for(strategy: str, role: str, old, added, survivors: list[int]) -> np.ndarray:
    if not added:
        return np.zeros((0, len(old)))
    if strategy == "zero_padding":
        mix = np.zeros((len(added), len(old)))
        if role == "output":
            competitors = survivors or list(range(len(old)))
            mix[:, competitors] = 1.0 / len(competitors)
        return mix
    if strategy == "weight_interpolation":
        return interpolation_mix(old, added)
    return attention_mix(old, added)  # attention_based, and the start of knowledge_distillation


def _reslot(
    tensor: torch.Tensor, spec: SlotTensor, n_old: int, keep: list[int], mix: np.ndarray
) -> torch.Tensor:
    moved = tensor.movedim(spec.axis, 0)
    head = moved[: spec.offset]
    end = spec.offset + n_old * spec.block
    body, tail = moved[spec.offset : end], moved[end:]
    blocks = body.reshape(n_old, spec.block, *body.shape[1:])
    fresh = torch.einsum("ao,ob...->ab...", torch.as_tensor(mix, dtype=blocks.dtype), blocks)
    blocks = torch.cat([blocks[keep], fresh])
    body = blocks.reshape(-1, *body.shape[1:])
    return torch.cat([head, body, tail]).movedim(0, spec.axis).contiguous()


def resize(policy: SlotPolicy, new_nodes: Sequence[NodeProfile], strategy: str) -> SlotPolicy:
    """A new policy of the same architecture with one slot per node in `new_nodes`."""
    check_strategy(strategy)
    new_nodes = check_unique(new_nodes)
    old = policy.nodes
    by_name = {n.name: n for n in new_nodes}
    keep = [i for i, n in enumerate(old) if n.name in by_name]
    old_names = {o.name for o in old}
    added = [n for n in new_nodes if n.name not in old_names]
    ordered = [by_name[old[i].name] for i in keep] + added
    resized = type(policy)(ordered, policy.hidden)
    state = copy.deepcopy(policy.state_dict())
    for spec in policy.slot_tensors():
        mix = _mix_for(strategy, spec.role, old, added, keep)
        state[spec.param] = _reslot(state[spec.param], spec, len(old), keep, mix)
    resized.load_state_dict(state)
    return resized
