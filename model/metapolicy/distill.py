"""Knowledge distillation from the backup policy into a resized student.

The teacher runs in masked mode on the new cluster: it only knows the surviving nodes. So the
student is taught the teacher's choice *among the nodes the teacher knows* (both distributions
renormalised over those nodes), on states of the new cluster visited by the student itself
(DAgger-style, so it learns where it actually goes). What to do with the new nodes is left to the
PPO fine-tune that follows; the teacher has nothing to say about them. On a big cluster the
states are sub-clusters of it (`metapolicy.subclusters`), as in fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from metapolicy.cluster import NodeProfile
from metapolicy.policy import MASKED_LOGIT, SlotPolicy
from metapolicy.sim import PlacementSim
from metapolicy.traces import Workload


@dataclass(frozen=True)
class DistillSettings:
    steps: int = 8192  # placements collected from the new cluster
    envs: int = 16
    epochs: int = 4
    batch: int = 512
    learning_rate: float = 1e-3
    seed: int = 0


def collect_states(
    student: SlotPolicy,
    nodes: Sequence[NodeProfile],
    workload: Workload | None,
    s: DistillSettings,
):
    """Observations of the new cluster along the student's own (sampled) trajectories."""
    sim = PlacementSim(nodes, workload, batch=s.envs)
    generator = torch.Generator().manual_seed(s.seed)
    obs, seed, states = sim.reset(s.seed * 7_919 + 5), 0, []
    for _ in range(max(1, s.steps // s.envs)):
        states.append(obs)
        actions = student.act(obs, sim.names, deterministic=False, generator=generator)
        obs, _, done, _ = sim.step(actions)
        if done:
            seed += 1
            obs = sim.reset(s.seed * 7_919 + 5 + seed)
    return states, sim.names


def _known_log_probs(policy: SlotPolicy, batch, known: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over the teacher-known nodes, in a shared env-node order."""
    logits = policy.action_logits(*batch)
    return torch.log_softmax(logits.masked_fill(~known, MASKED_LOGIT), -1)


def kl_to_teacher(student: SlotPolicy, teacher: SlotPolicy, states, env_names) -> float:
    """Mean KL(teacher || student) over the teacher-known nodes: what distillation lowers."""
    with torch.no_grad():
        return float(torch.stack([_kl(student, teacher, obs, env_names) for obs in states]).mean())


def _kl(student, teacher, obs, env_names) -> torch.Tensor:
    if obs.members is not None:
        return _kl_subset(student, teacher, obs, env_names)
    device = student.device
    s_batch = tuple(t.to(device) for t in student.view(obs, env_names))
    t_batch = tuple(t.to(device) for t in teacher.view(obs, env_names))
    # Align both policies on env node order so slot orders may differ.
    s_index, _ = student._slot_index(env_names)
    t_index, t_present = teacher._slot_index(env_names)
    size = len(env_names)
    known = torch.zeros(obs.mask.shape[0], size, dtype=torch.bool, device=device)
    known[:, torch.as_tensor(t_index[t_present], device=device)] = True
    known &= torch.from_numpy(obs.mask).to(device)
    t_logp = _scatter(_known_log_probs(teacher, t_batch, t_batch[2]), t_index, t_present, size)
    s_logits = student.action_logits(*s_batch)
    s_logits = _scatter(s_logits, s_index, None, size, fill=MASKED_LOGIT)
    s_logp = torch.log_softmax(s_logits.masked_fill(~known, MASKED_LOGIT), -1)
    p = t_logp.exp()
    return (p * (t_logp - s_logp)).masked_fill(~known, 0).sum(-1).mean()


def _kl_subset(student, teacher, obs, env_names) -> torch.Tensor:
    """The same on a sub-cluster, whose observations are already in env order."""
    device = student.device
    t_inputs = [t.to(device) for t in teacher.inputs(obs, env_names)]
    known = t_inputs[2]  # the observation's mask and the teacher's slots
    with torch.no_grad():
        t_logp = torch.log_softmax(teacher.action_logits(*t_inputs), -1)
    s_logits = student.action_logits(*(t.to(device) for t in student.inputs(obs, env_names)))
    s_logp = torch.log_softmax(s_logits.masked_fill(~known, MASKED_LOGIT), -1)
    p = t_logp.exp()
    return (p * (t_logp - s_logp)).masked_fill(~known, 0).sum(-1).mean()


def _scatter(values, index, present, size, fill=MASKED_LOGIT):
    """Slot-ordered (B, slots) values -> env-ordered (B, size)."""
    out = torch.full((values.shape[0], size), fill, dtype=values.dtype, device=values.device)
    keep = slice(None) if present is None else torch.as_tensor(present, device=values.device)
    out[:, torch.as_tensor(index, device=values.device)[keep]] = values[:, keep]
    return out


def distill(
    student: SlotPolicy,
    teacher: SlotPolicy,
    nodes: Sequence[NodeProfile],
    workload: Workload | None = None,
    settings: DistillSettings | None = None,
) -> tuple[float, float]:
    """Train the whole student to match the teacher; returns KL (before, after) on the states."""
    s = settings or DistillSettings()
    torch.manual_seed(s.seed)
    states, names = collect_states(student, nodes, workload, s)
    before = kl_to_teacher(student, teacher, states, names)
    optimizer = torch.optim.Adam(student.parameters(), lr=s.learning_rate)
    per_batch = max(1, s.batch // s.envs)
    for _ in range(s.epochs):
        order = torch.randperm(len(states)).tolist()
        for start in range(0, len(order), per_batch):
            loss = torch.stack(
                [_kl(student, teacher, states[i], names) for i in order[start : start + per_batch]]
            ).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return before, kl_to_teacher(student, teacher, states, names)
