"""Reading Kubernetes objects as the plain mappings they arrive as (kopf bodies, watch events,
the JSON of a scheduler request): one tolerant accessor instead of a chain of `.get()`s that
breaks on the first missing or malformed level."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def dig(obj: Any, *path: str) -> Any:
    """obj[path[0]][path[1]]..., or None as soon as a level is missing or not a mapping."""
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj
