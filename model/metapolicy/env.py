"""Gymnasium view of the placement simulator: one episode at a time, for users and tools that
speak the gymnasium API. Training and evaluation use `PlacementSim` batches directly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from metapolicy.cluster import NodeProfile, make_cluster
from metapolicy.features import NODE_FEATURES, TASK_FEATURES, Observation
from metapolicy.sim import PlacementSim
from metapolicy.traces import Workload

ENV_ID = "MetaPolicyPlacement-v0"
FEATURE_BOUND = 1e4  # features are ratios and scaled sizes; finite bounds keep tooling happy


class PlacementEnv(gym.Env):
    """Observation: {"nodes": (N, F), "task": (T,), "action_mask": (N,) int8}; action: a node index.

    The mask holds the nodes the task fits (every available one when it fits none), as
    kube-scheduler's filter passes them on. `info["action_mask"]` repeats the mask for
    wrappers that look there; `info["cost_ms"]` is the placement cost behind the reward.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(
        self,
        nodes: Sequence[NodeProfile] | None = None,
        workload: Workload | None = None,
        available: Sequence[bool] | None = None,
    ) -> None:
        self.sim = PlacementSim(nodes or make_cluster(8), workload, batch=1, available=available)
        n = self.sim.size
        self.observation_space = spaces.Dict(
            {
                "nodes": spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (n, NODE_FEATURES), np.float32),
                "task": spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (TASK_FEATURES,), np.float32),
                "action_mask": spaces.Box(0, 1, (n,), np.int8),
            }
        )
        self.action_space = spaces.Discrete(n)

    def _convert(self, obs: Observation) -> dict:
        return {
            "nodes": obs.nodes[0],
            "task": obs.task[0],
            "action_mask": obs.choices[0].astype(np.int8),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        obs = self._convert(self.sim.reset([episode_seed]))
        return obs, {"action_mask": obs["action_mask"]}

    def step(self, action):
        obs, reward, done, cost = self.sim.step(np.array([int(action)]))
        obs = self._convert(obs)
        info = {"action_mask": obs["action_mask"], "cost_ms": float(cost[0])}
        return obs, float(reward[0]), bool(done), False, info


def register() -> None:
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="metapolicy.env:PlacementEnv")
