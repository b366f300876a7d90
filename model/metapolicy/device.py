"""Where the policy's tensors live while it trains: `auto`, `cpu` or `cuda`.

Training (PPO, imitation, distillation, and the weight selection scored during it) runs the
policy on this device; the simulator stays numpy on the CPU (a step of a 32-node sub-cluster is
a few hundred microseconds of small array operations, nothing a GPU speeds up), and so do
zero-shot validation and serving, which would only pay a GPU's start-up cost. A device that is
asked for but absent is a clear error naming the setting, not a crash deep in torch.
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


class DeviceUnavailable(ValueError):
    """The requested device does not exist here; the message names the setting."""


def device_problem(name: str, field: str = "device") -> str | None:
    """Why `name` cannot be used here, or None."""
    if name not in DEVICES:
        return f"{field}={name!r} is not one of {', '.join(DEVICES)}"
    if name == "cuda" and not torch.cuda.is_available():
        built = "with" if torch.backends.cuda.is_built() else "without"
        return (
            f"{field}=cuda, but torch sees no CUDA GPU here (torch {torch.__version__}, built "
            f"{built} CUDA); use auto (the GPU when there is one) or cpu"
        )
    return None


def resolve_device(name: str, field: str = "device") -> torch.device:
    """`auto` -> cuda when torch sees a GPU, else cpu; `cuda` without one raises."""
    problem = device_problem(name, field)
    if problem is not None:
        raise DeviceUnavailable(problem)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
