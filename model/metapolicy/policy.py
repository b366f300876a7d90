"""Placement policies with one slot per node, keyed by node name.

A policy only ever sees nodes through its own slots: `view()` gathers the simulator's nodes
into slot order, and a node the policy has no slot for is invisible (never chosen), which is
what running an old policy "in masked mode" on a changed cluster means. On a sub-cluster (an
observation of a few nodes drawn from a big node set, `metapolicy.subclusters`), `inputs()`
keeps the observation's own node order and adds each node's slot id instead: memory and time
then follow the sub-cluster, not the number of slots. Only architectures with
`scores_subsets` (node-set) can do that.

Each architecture declares its slot tensors (`SlotTensor`): where in which parameter the
per-slot blocks live. Resize strategies work only through that declaration, so the same ladder
of strategies serves both architectures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from metapolicy.cluster import NodeProfile, TooManyNodes, check_unique
from metapolicy.features import (
    COST_FEATURE,
    FITS_FEATURE,
    NODE_FEATURES,
    TASK_FEATURES,
    Observation,
)

MASKED_LOGIT = -1e9
# Logits start as -30 x (cost / 100 ms): a 3 ms cheaper node is ~1 logit likelier. A fresh policy's
# argmax is therefore the myopic heuristic, and training learns where foresight should overrule it.
COST_PRIOR = 30.0


@dataclass(frozen=True)
class SlotTensor:
    """Slot `j` owns `param[..., offset + j*block : offset + (j+1)*block]` along `axis`.

    `role` says how a neutral new slot looks: "input" blocks (what the network reads about a
    node) start at zero, "output" blocks (the node's own decision row) start at the mean.
    """

    param: str
    axis: int
    block: int = 1
    offset: int = 0
    role: Literal["input", "output"] = "input"


def _layer_of(param: str) -> str:
    """'first.weight' -> 'first'; a bare parameter such as 'slot_table' is its own layer."""
    return param.rsplit(".", 1)[0]


def _layer(n_in: int, n_out: int, gain: float = np.sqrt(2)) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class SlotPolicy(nn.Module):
    """Common slot bookkeeping, masking and acting."""

    architecture: str
    scores_subsets = False  # True: forward() also takes env-ordered nodes plus their slot ids
    max_slots: int | None = None  # the most nodes the architecture is meant for (None: any)

    def __init__(self, nodes: Sequence[NodeProfile], hidden: int) -> None:
        super().__init__()
        self.nodes = check_unique(nodes)
        self.hidden = hidden
        self.cost_weight = nn.Parameter(torch.tensor(-COST_PRIOR))
        # Choose only among nodes the task fits (`_with_cost_prior`); off only in rollback drills.
        self.filtered = True
        self._views: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._env_slots: tuple[Sequence[str] | None, np.ndarray] = (None, np.zeros(0))
        self._slot_of = {node.name: j for j, node in enumerate(self.nodes)}

    @property
    def slot_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def device(self) -> torch.device:
        return self.cost_weight.device

    def slot_tensors(self) -> list[SlotTensor]:
        raise NotImplementedError

    def resized_parameters(self) -> list[nn.Parameter]:
        """The parameters a resize touches: what the `trunk` freeze mode leaves trainable."""
        layers = {_layer_of(t.param) for t in self.slot_tensors()}
        return [p for name, p in self.named_parameters() if _layer_of(name) in layers]

    def config(self) -> dict:
        return {"architecture": self.architecture, "hidden": self.hidden}

    # ----- observation plumbing ----------------------------------------------------------------
    def _slot_index(self, env_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        key = tuple(env_names)
        if key not in self._views:
            where = {name: i for i, name in enumerate(env_names)}
            index = np.array([where.get(name, -1) for name in self.slot_names])
            self._views[key] = (np.maximum(index, 0), index >= 0)
        return self._views[key]

    def view(self, obs: Observation, env_names: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """(nodes, task, mask) tensors in slot order; slots whose node is absent are masked."""
        return self._in_slot_order(obs, *self._slot_index(env_names))

    @staticmethod
    def _in_slot_order(
        obs: Observation, index: np.ndarray, present: np.ndarray
    ) -> tuple[torch.Tensor, ...]:
        mask = obs.mask[:, index] & present
        nodes = np.where(mask[..., None], obs.nodes[:, index], 0.0)
        return torch.from_numpy(nodes), torch.from_numpy(obs.task), torch.from_numpy(mask)

    def to_env_actions(self, slots: np.ndarray, env_names: Sequence[str]) -> np.ndarray:
        index, _ = self._slot_index(env_names)
        return index[slots]

    def env_slots(self, env_names: Sequence[str]) -> np.ndarray:
        """(N,) the slot of each env node, -1 where the policy has none. Remembers the last
        list it was asked about (by identity): a simulator asks about the same one each step,
        and hashing thousands of names per step would cost more than the step."""
        last, slots = self._env_slots
        if last is not env_names:
            slots = np.array([self._slot_of.get(name, -1) for name in env_names], np.int64)
            self._env_slots = (env_names, slots)
        return slots

    def inputs(self, obs: Observation, env_names: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """What `forward` takes for `obs` (CPU tensors): `view()` for a whole cluster; on a
        sub-cluster, its nodes in their own order plus their slot ids (-1: no slot, masked)."""
        if obs.members is None:
            return self.view(obs, env_names)
        if not self.scores_subsets:
            raise ValueError(
                f"a {self.architecture} policy reads every slot in place and cannot play "
                "sub-clusters; train it on the whole cluster"
            )
        slots = self.env_slots(env_names)[obs.members]
        mask = obs.mask & (slots >= 0)
        nodes = np.where(mask[..., None], obs.nodes, 0.0)
        return (
            torch.from_numpy(nodes),
            torch.from_numpy(obs.task),
            torch.from_numpy(mask),
            torch.from_numpy(slots),
        )

    def env_actions(
        self, choice: np.ndarray, obs: Observation, env_names: Sequence[str]
    ) -> np.ndarray:
        """Columns of `forward`'s logits for `obs` -> the simulator's node indices."""
        return choice if obs.members is not None else self.to_env_actions(choice, env_names)

    # ----- acting ---------------------------------------------------------------------------------
    def forward(
        self,
        nodes: torch.Tensor,
        task: torch.Tensor,
        mask: torch.Tensor,
        slots: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (masked logits (B, slots), value (B,)); with `slots` (B, N), the slot of each
        of N env-ordered nodes (`inputs()` on a sub-cluster), logits are (B, N) in that order."""
        return self._logits_and_value(nodes, task, mask, slots, with_value=True)

    def action_logits(
        self,
        nodes: torch.Tensor,
        task: torch.Tensor,
        mask: torch.Tensor,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward`'s logits alone: a decision never needs the value head, which would add
        about a tenth to the cost of one (`benchmarks.decision`)."""
        return self._logits_and_value(nodes, task, mask, slots, with_value=False)[0]

    def _logits_and_value(self, nodes, task, mask, slots, with_value: bool):
        if slots is None:
            logits, value = self._forward(nodes, task, mask, with_value)
        else:
            logits, value = self._forward_subset(nodes, task, mask, slots, with_value)
        return self._with_cost_prior(logits, nodes, mask), value

    def _forward_subset(self, nodes, task, mask, slots, with_value):  # pragma: no cover
        raise ValueError(f"a {self.architecture} policy cannot score a subset of its slots")

    def _with_cost_prior(
        self, logits: torch.Tensor, nodes: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The cost prior, then the mask: only nodes the task fits while any does, as
        kube-scheduler's filter hands an extender only those (`Observation.choices`)."""
        logits = logits + self.cost_weight * nodes[..., COST_FEATURE]
        if not self.filtered:
            return logits.masked_fill(~mask, MASKED_LOGIT)
        fits = mask & (nodes[..., FITS_FEATURE] > 0.5)
        choices = torch.where(fits.any(-1, keepdim=True), fits, mask)
        return logits.masked_fill(~choices, MASKED_LOGIT)

    def _forward(self, nodes, task, mask, with_value):  # pragma: no cover - abstract
        raise NotImplementedError

    # ----- serving: scoring the nodes a scheduler offers ----------------------------------------
    def scorable(self, env_names: Sequence[str]) -> np.ndarray:
        """(N,) bool: the nodes `preferences` can score. Here only nodes with a slot; node-set
        scores any node from its features."""
        return np.array([name in self._slot_of for name in env_names], bool)

    @torch.inference_mode()
    def preferences(self, obs: Observation, env_names: Sequence[str]) -> np.ndarray:
        """Logits (B, N) over the observation's nodes, in `env_names` order; MASKED_LOGIT where
        the observation masks a node or the policy cannot score it (`scorable`).

        Unlike `view`, nothing is cached per node list: a scheduler offers a different list of
        candidate nodes with nearly every pod, and a cache keyed by it would grow forever.
        """
        slot_env = self._env_index_of_slots(env_names)
        present = slot_env >= 0
        logits = self.action_logits(*self._in_slot_order(obs, np.maximum(slot_env, 0), present))
        out = np.full(obs.mask.shape, MASKED_LOGIT, np.float32)
        out[:, slot_env[present]] = logits.numpy()[:, present]
        return np.where(obs.mask, out, MASKED_LOGIT).astype(np.float32)

    def _env_index_of_slots(self, env_names: Sequence[str]) -> np.ndarray:
        """(slots,) the env index of each slot's node, -1 where the node is absent."""
        where = {name: i for i, name in enumerate(env_names)}
        return np.array([where.get(name, -1) for name in self.slot_names], np.int64)

    @torch.inference_mode()
    def act(
        self,
        obs: Observation,
        env_names: Sequence[str],
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """Env node indices for a batch of observations: argmax, or sampled.

        Sampling inverts the CDF in env-node order with one uniform draw per decision, so two
        policies with the same distribution over nodes make the same choice whatever their slot
        order (common random numbers for the policy's own randomness too).
        """
        logits = self.action_logits(*(t.to(self.device) for t in self.inputs(obs, env_names)))
        logits = logits.cpu()
        if deterministic:
            return self.env_actions(logits.argmax(-1).numpy(), obs, env_names)
        if obs.members is not None:
            probs = torch.softmax(logits, -1).numpy().astype(np.float64)
        else:
            index, present = self._slot_index(env_names)
            probs = np.zeros(obs.mask.shape)
            probs[:, index[present]] = torch.softmax(logits, -1).numpy()[:, present]
        cdf = np.cumsum(probs, -1)
        u = torch.rand(len(probs), generator=generator, dtype=torch.float64).numpy()
        choice = (cdf <= (u * cdf[:, -1])[:, None]).sum(-1)  # first node whose CDF passes u
        return np.minimum(choice, probs.shape[1] - 1)

    def agent(self, deterministic: bool = True, seed: int = 0):
        """Adapter to the baselines' `Agent` signature for paired evaluation.

        Argmax is the serving mode: decisions are reproducible, and since an untrained policy's
        argmax *is* the myopic heuristic, every point of S above 1 is something it learned.
        """
        generator = torch.Generator().manual_seed(seed)
        return lambda sim, obs: self.act(obs, sim.names, deterministic, generator)


def _concat_linear(layer: nn.Linear, per_node: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """`layer(cat([per_node, shared broadcast over nodes], -1))` without the concatenation:
    the shared half is applied once per row instead of once per node (same function, about
    half the FLOPs of the node-set forward pass)."""
    if not isinstance(layer.weight, torch.Tensor):  # int8-quantised: weights cannot be split
        expanded = shared[:, None].expand(-1, per_node.shape[1], -1)
        return layer(torch.cat([per_node, expanded], -1))
    k = per_node.shape[-1]
    shared_part = shared @ layer.weight[:, k:].T + layer.bias
    return per_node @ layer.weight[:, :k].T + shared_part[:, None]


class NodeSetPolicy(SlotPolicy):
    """Shared per-node encoder + pooled cross-node context + per-node logits.

    The only per-slot weights are `slot_table`: a learned bias per node in the encoder's first
    layer, for what the features do not show. Everything else is shared by all nodes, so
    adding or removing a node leaves the learned placement rule intact.
    """

    architecture = "node-set"
    scores_subsets = True

    def __init__(self, nodes: Sequence[NodeProfile], hidden: int = 64) -> None:
        super().__init__(nodes, hidden)
        self.slot_table = nn.Parameter(torch.zeros(self.size, hidden))
        self.encode_in = _layer(NODE_FEATURES + TASK_FEATURES, hidden)
        self.encode_out = _layer(hidden, hidden)
        self.decide = nn.Sequential(_layer(3 * hidden, hidden), nn.Tanh(), _layer(hidden, 1, 0.01))
        self.value_head = nn.Sequential(
            _layer(2 * hidden + TASK_FEATURES, hidden), nn.Tanh(), _layer(hidden, 1, 1.0)
        )

    def slot_tensors(self) -> list[SlotTensor]:
        return [SlotTensor("slot_table", axis=0)]

    def _forward(self, nodes, task, mask, with_value):
        return self._forward_with(nodes, task, mask, self.slot_table, with_value)

    def _forward_subset(self, nodes, task, mask, slots, with_value):
        """Env-ordered nodes with their slot ids: only the rows in use are gathered (and get
        gradient), a node without a slot (-1) gets the zero embedding, as in `preferences`."""
        rows = self.slot_table[slots.clamp(min=0)]
        table = torch.where((slots >= 0)[..., None], rows, torch.zeros((), device=rows.device))
        return self._forward_with(nodes, task, mask, table, with_value)

    def scorable(self, env_names: Sequence[str]) -> np.ndarray:
        return np.ones(len(env_names), bool)

    @torch.inference_mode()
    def preferences(self, obs: Observation, env_names: Sequence[str]) -> np.ndarray:
        """Every node in env order, the ones without a slot (a node that joined after the last
        adaptation) with a zero slot embedding: the shared weights know what a node with those
        features is worth, and the pooled context sees every node the scheduler offers."""
        rows = np.array([self._slot_of.get(name, -1) for name in env_names], np.int64)
        known = torch.from_numpy(rows >= 0)[:, None]
        table = torch.where(known, self.slot_table[torch.from_numpy(np.maximum(rows, 0))], 0.0)
        mask = torch.from_numpy(obs.mask)
        nodes = torch.from_numpy(np.where(obs.mask[..., None], obs.nodes, 0.0))
        task = torch.from_numpy(obs.task)
        logits, _ = self._forward_with(nodes, task, mask, table, with_value=False)
        return self._with_cost_prior(logits, nodes, mask).numpy()

    def _forward_with(self, nodes, task, mask, slot_table: torch.Tensor, with_value: bool):
        """The forward pass with the given per-node embedding rows, (N, hidden); the value
        (None unless `with_value`) from the pooled context and the task."""
        h = torch.tanh(_concat_linear(self.encode_in, nodes, task) + slot_table)
        h = torch.tanh(self.encode_out(h))
        weight = mask[..., None].float()
        mean = (h * weight).sum(1) / weight.sum(1).clamp(min=1)
        peak = h.masked_fill(~mask[..., None], -2.0).max(1).values  # tanh > -1: -2 never wins
        context = torch.cat([mean, peak], -1)
        logits = self.decide[1:](_concat_linear(self.decide[0], h, context))
        if not with_value:
            return logits[..., 0], None
        return logits[..., 0], self.value_head(torch.cat([context, task], -1))[..., 0]


class SlotMLPPolicy(SlotPolicy):
    """The flat network of the background design: all node features concatenated -> MLP ->
    one logit per node. Its first layer's input columns and last layer's rows are per slot."""

    architecture = "slot-mlp"
    # The flat foil keeps the old maxNodes limit: its input layer has a block per node, and
    # it cannot play sub-clusters, so every step costs O(N). Above ~100 nodes (hidden 64) its
    # checkpoint also outgrows a ConfigMap (filesystem storage then).
    max_slots = 256

    def __init__(self, nodes: Sequence[NodeProfile], hidden: int = 64) -> None:
        super().__init__(nodes, hidden)
        self.first = _layer(self.size * NODE_FEATURES + TASK_FEATURES, hidden)
        self.middle = _layer(hidden, hidden)
        self.logits = _layer(hidden, self.size, 0.01)
        self.value = _layer(hidden, 1, 1.0)

    def slot_tensors(self) -> list[SlotTensor]:
        return [
            SlotTensor("first.weight", axis=1, block=NODE_FEATURES),
            SlotTensor("logits.weight", axis=0, role="output"),
            SlotTensor("logits.bias", axis=0, role="output"),
        ]

    def _forward(self, nodes, task, mask, with_value):
        x = torch.cat([nodes.flatten(1), task], -1)
        h = torch.tanh(self.middle(torch.tanh(self.first(x))))
        return self.logits(h), (self.value(h)[..., 0] if with_value else None)


ARCHITECTURES: dict[str, type[SlotPolicy]] = {
    NodeSetPolicy.architecture: NodeSetPolicy,
    SlotMLPPolicy.architecture: SlotMLPPolicy,
}


def check_capacity(architecture: str, count: int) -> None:
    """Refuse a node count the architecture is not meant for, naming the limit."""
    limit = ARCHITECTURES[architecture].max_slots if architecture in ARCHITECTURES else None
    if limit is not None and count > limit:
        raise TooManyNodes(
            f"{count} nodes exceed the {limit} a {architecture} policy supports (its input "
            "layer has a block per node); use architecture node-set for bigger clusters"
        )


def make_policy(
    architecture: str, nodes: Sequence[NodeProfile], hidden: int = 64, seed: int = 0
) -> SlotPolicy:
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}"
        )
    torch.manual_seed(seed)
    return ARCHITECTURES[architecture](nodes, hidden)
