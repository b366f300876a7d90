"""PPO for slot policies (clipped objective, GAE, minibatches), in the spirit of CleanRL's
single-file PPO. Used both for initial training and for fine-tuning after a resize, where
`freeze` decides which weights may move."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from metapolicy.cluster import NodeProfile
from metapolicy.policy import SlotPolicy
from metapolicy.sim import PlacementSim
from metapolicy.subclusters import SubClusters
from metapolicy.traces import Workload

Freeze = Literal["none", "trunk", "gradual"]
FREEZE_MODES: tuple[str, ...] = ("none", "trunk", "gradual")


@dataclass(frozen=True)
class PPOSettings:
    """Defaults are for initial training; `fine_tune()` gives the preset used after a resize."""

    steps: int = 300_000  # environment steps (placements) in total
    envs: int = 16
    rollout: int = 128  # steps per env between updates (GAE mode; groups use whole episodes)
    # Gradient steps are most of the wall time. 4 epochs x 8 minibatches (a third of the steps
    # of 6 x 16) scored as well at 300k steps: S 1.070/1.031/1.031 on seeds 0-2, against
    # 1.046/1.070/0.992 with 6 x 16. 3 x 4 needed 600k steps for the same (1.034/1.073/1.032).
    epochs: int = 4
    minibatches: int = 8
    learning_rate: float = 1e-3
    gamma: float = 0.99  # big-task rejections land tens of placements after the decision
    gae_lambda: float = 0.95
    clip: float = 0.2
    entropy_coef: float = 0.0  # the cost prior already spreads early choices among near-equal nodes
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    freeze: Freeze = "none"
    seed: int = 0
    # 0: GAE with the value head. k >= 2: envs in groups of k share one task stream and a
    # step's advantage is its discounted return minus the mean of the other k-1 envs' returns
    # from the same step (a leave-one-out baseline, as in RLOO/GRPO). The shared stream cancels
    # the noise of *when* big tasks arrive, which drowns the signal of reserving room for them.
    # Measured on the hardest 8-node cluster (seed 1, 300k steps): S 1.01-1.03 with GAE, 1.06
    # with groups of 4.
    group: int = 4

    @classmethod
    def fine_tune(cls, steps: int, freeze: Freeze = "gradual", seed: int = 0) -> PPOSettings:
        """Fewer envs per update (a 50k-step budget still gets ~24 updates), a gentler step size
        so a short fine-tune refines what the policy knows rather than overwriting it, and a
        quarter of the gradient steps (3 epochs of 4 minibatches): gradient steps are most of
        a fine-tune's wall time, and keeping the best weights (`selection.py`) covers the
        updates that would have needed more of them."""
        return cls(
            steps=steps,
            envs=8,
            epochs=3,
            minibatches=4,
            learning_rate=3e-4,
            freeze=freeze,
            seed=seed,
        )


@dataclass
class TrainStats:
    steps: int = 0
    updates: int = 0
    seconds: float = 0.0
    episode_returns: list[float] = field(default_factory=list)  # mean per finished batch


def _set_trainable(policy: SlotPolicy, only_resized: bool) -> list[nn.Parameter]:
    resized = {id(p) for p in policy.resized_parameters()}
    for p in policy.parameters():
        p.requires_grad_(not only_resized or id(p) in resized)
    return [p for p in policy.parameters() if p.requires_grad]


def train(
    policy: SlotPolicy,
    nodes: Sequence[NodeProfile],
    workload: Workload | None = None,
    settings: PPOSettings | None = None,
    on_update: Callable[[TrainStats], None] | None = None,
) -> TrainStats:
    """Train `policy` in place on a cluster of `nodes` for `settings.steps` placements.

    Nodes the policy has no slot for are masked out of the simulator, so a policy is never
    trained on actions it cannot take. With `freeze="gradual"` only the resized layers train
    for the first half of the budget, then everything.

    `nodes` given as `SubClusters`: every group of envs plays its own sub-cluster, drawn in
    turn so every node (and slot embedding) is seen; buffers hold the sub-cluster's nodes and
    their slot ids, never all slots. The policy runs on its own device; the simulator on numpy.
    """
    s = settings or PPOSettings()
    torch.manual_seed(s.seed)
    known = set(policy.slot_names)
    sim = PlacementSim(nodes, workload, batch=s.envs, available=[n.name in known for n in nodes])
    names = sim.names
    device = policy.device
    generator = torch.Generator().manual_seed(s.seed)
    # multinomial needs a generator on the policy's device; on the CPU it is the same one
    sampler = generator if device.type == "cpu" else torch.Generator(device).manual_seed(s.seed)
    stats = TrainStats()
    start = time.perf_counter()
    if s.group and s.envs % s.group:
        raise ValueError(f"envs={s.envs} is not a multiple of group={s.group}")
    rollout = sim.episode_tasks if s.group else s.rollout  # groups need whole episodes
    batch = s.envs * rollout
    updates = max(1, s.steps // batch)
    optimizer = torch.optim.Adam(policy.parameters(), lr=s.learning_rate, eps=1e-5)

    width = s.group or 1

    def episode_seeds(episode: int) -> list[int]:
        return [(s.seed * 7_919 + episode) * s.envs + i // width for i in range(s.envs)]

    def members(episode: int) -> np.ndarray | None:
        """The sub-clusters of an episode's env groups (a group shares its cluster too)."""
        if not isinstance(nodes, SubClusters):
            return None
        groups = s.envs // width
        return np.repeat(nodes.in_turn((episode - 1) * groups, groups), width, axis=0)

    obs = sim.reset(episode_seeds(1), members(1))
    episode_seed, episode_return = 1, np.zeros(s.envs)
    for update in range(updates):
        only_resized = s.freeze == "trunk" or (s.freeze == "gradual" and update < updates // 2)
        params = _set_trainable(policy, only_resized)
        for param_group in optimizer.param_groups:
            param_group["lr"] = s.learning_rate * (1 - update / updates)

        buffers = {k: [] for k in ("inputs", "action", "logp", "value", "reward", "done")}
        with torch.no_grad():
            for _ in range(rollout):
                inputs = tuple(t.to(device) for t in policy.inputs(obs, names))
                logits, value = policy(*inputs)
                dist = torch.distributions.Categorical(logits=logits)
                action = torch.multinomial(dist.probs, 1, generator=sampler)[:, 0]
                chosen = policy.env_actions(action.cpu().numpy(), obs, names)
                obs, reward, done, _ = sim.step(chosen)
                episode_return += reward
                for key, val in (
                    ("inputs", inputs), ("action", action),
                    ("logp", dist.log_prob(action)), ("value", value),
                    ("reward", torch.from_numpy(reward).float().to(device)),
                    ("done", torch.full((s.envs,), float(done), device=device)),
                ):  # fmt: skip
                    buffers[key].append(val)
                if done:
                    stats.episode_returns.append(float(episode_return.mean()))
                    episode_return[:] = 0
                    episode_seed += 1
                    obs = sim.reset(episode_seeds(episode_seed), members(episode_seed))
            _, next_value = policy(*(t.to(device) for t in policy.inputs(obs, names)))

        inputs = [torch.stack(part) for part in zip(*buffers.pop("inputs"), strict=True)]
        data = {k: torch.stack(v) for k, v in buffers.items()}
        if s.group:
            advantages, returns = _group_advantages(data["reward"], s.group, s.gamma)
        else:
            advantages = _gae(data["reward"], data["value"], data["done"], next_value, s)
            returns = advantages + data["value"]
        flat = {k: v.reshape(batch, *v.shape[2:]) for k, v in data.items()}
        flat["advantage"], flat["return"] = advantages.reshape(batch), returns.reshape(batch)
        flat_inputs = [v.reshape(batch, *v.shape[2:]) for v in inputs]
        _update(policy, optimizer, params, flat_inputs, flat, s, generator)

        stats.steps += batch
        stats.updates += 1
        if on_update is not None:
            on_update(stats)
    _set_trainable(policy, False)
    stats.seconds = time.perf_counter() - start
    return stats


def _gae(rewards, values, dones, next_value, s: PPOSettings) -> torch.Tensor:
    """Generalised advantage estimates; `dones[t]` marks that step t ended its episode."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = rewards[t] + s.gamma * following * alive - values[t]
        last = delta + s.gamma * s.gae_lambda * alive * last
        advantages[t] = last
    return advantages


def _group_advantages(rewards: torch.Tensor, group: int, gamma: float):
    """(advantages, returns) for whole episodes laid out as (steps, envs), envs grouped."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running
        returns[t] = running
    grouped = returns.reshape(returns.shape[0], -1, group)
    others = (grouped.sum(-1, keepdim=True) - grouped) / (group - 1)
    return (grouped - others).reshape(returns.shape), returns


def _update(policy, optimizer, params, inputs, data, s: PPOSettings, generator) -> None:
    size = data["action"].shape[0]
    minibatch = size // s.minibatches
    for _ in range(s.epochs):
        order = torch.randperm(size, generator=generator).to(policy.device)
        for start in range(0, size - minibatch + 1, minibatch):
            idx = order[start : start + minibatch]
            logits, value = policy(*(x[idx] for x in inputs))
            dist = torch.distributions.Categorical(logits=logits)
            logp = dist.log_prob(data["action"][idx])
            ratio = (logp - data["logp"][idx]).exp()
            adv = data["advantage"][idx]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - s.clip, 1 + s.clip)).mean()
            value_loss = 0.5 * (value - data["return"][idx]).pow(2).mean()
            entropy = dist.entropy().mean()
            loss = policy_loss + s.value_coef * value_loss - s.entropy_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            optimizer.step()
