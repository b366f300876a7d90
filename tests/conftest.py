"""Shared test setup: small networks run fastest on one torch thread (and stay deterministic)."""

import torch

torch.set_num_threads(1)
