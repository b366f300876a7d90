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
    """
    s = settings or PPOSettings()
    torch.manual_seed(s.seed)
    known = set(policy.slot_names)
    sim = PlacementSim(nodes, workload, batch=s.envs, available=[n.name in known for n in nodes])
    names = sim.names
    generator = torch.Generator().manual_seed(s.seed)
    stats = TrainStats()
    start = time.perf_counter()
    if s.group and s.envs % s.group:
        raise ValueError(f"envs={s.envs} is not a multiple of group={s.group}")
    rollout = sim.episode_tasks if s.group else s.rollout  # groups need whole episodes
    batch = s.envs * rollout
    updates = max(1, s.steps // batch)
    optimizer = torch.optim.Adam(policy.parameters(), lr=s.learning_rate, eps=1e-5)

    def episode_seeds(episode: int) -> list[int]:
        width = s.group or 1
        return [(s.seed * 7_919 + episode) * s.envs + i // width for i in range(s.envs)]

    obs = sim.reset(episode_seeds(1))
    episode_seed, episode_return = 1, np.zeros(s.envs)
    for update in range(updates):
        only_resized = s.freeze == "trunk" or (s.freeze == "gradual" and update < updates // 2)
        params = _set_trainable(policy, only_resized)
        for param_group in optimizer.param_groups:
            param_group["lr"] = s.learning_rate * (1 - update / updates)

        buffers = {
            k: [] for k in ("nodes", "task", "mask", "action", "logp", "value", "reward", "done")
        }
        with torch.no_grad():
            for _ in range(rollout):
                nodes_t, task_t, mask_t = policy.view(obs, names)
                logits, value = policy(nodes_t, task_t, mask_t)
                dist = torch.distributions.Categorical(logits=logits)
                action = torch.multinomial(dist.probs, 1, generator=generator)[:, 0]
                obs, reward, done, _ = sim.step(policy.to_env_actions(action.numpy(), names))
                episode_return += reward
                for key, val in (
                    ("nodes", nodes_t), ("task", task_t), ("mask", mask_t), ("action", action),
                    ("logp", dist.log_prob(action)), ("value", value),
                    ("reward", torch.from_numpy(reward).float()),
                    ("done", torch.full((s.envs,), float(done))),
                ):  # fmt: skip
                    buffers[key].append(val)
                if done:
                    stats.episode_returns.append(float(episode_return.mean()))
                    episode_return[:] = 0
                    episode_seed += 1
                    obs = sim.reset(episode_seeds(episode_seed))
            _, next_value = policy(*policy.view(obs, names))

        data = {k: torch.stack(v) for k, v in buffers.items()}
        if s.group:
            advantages, returns = _group_advantages(data["reward"], s.group, s.gamma)
        else:
            advantages = _gae(data["reward"], data["value"], data["done"], next_value, s)
            returns = advantages + data["value"]
        flat = {k: v.reshape(batch, *v.shape[2:]) for k, v in data.items()}
        flat["advantage"], flat["return"] = advantages.reshape(batch), returns.reshape(batch)
        _update(policy, optimizer, params, flat, s, generator)

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


def _update(policy, optimizer, params, data, s: PPOSettings, generator) -> None:
    size = data["action"].shape[0]
    minibatch = size // s.minibatches
    for _ in range(s.epochs):
        order = torch.randperm(size, generator=generator)
        for start in range(0, size - minibatch + 1, minibatch):
            idx = order[start : start + minibatch]
            logits, value = policy(data["nodes"][idx], data["task"][idx], data["mask"][idx])
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
