"""The recent arrivals of one policy's pods: the input of the arrival-pressure feature.

The simulator hands the policy the arrival times of the last `PRESSURE_WINDOW` tasks, the one
being placed last, finished and rejected ones included. A scheduler sees the same thing as the
creation timestamps of the policy's pods, so every pod is logged when first seen and stays in the
log after it ends or is deleted; only the window's length bounds it.
"""

from __future__ import annotations

import bisect

import numpy as np

from metapolicy.features import PRESSURE_WINDOW


class ArrivalLog:
    def __init__(self, capacity: int = 2 * PRESSURE_WINDOW) -> None:
        self.capacity = capacity
        self._times: list[float] = []  # ascending
        self._uids: list[str] = []  # in the same order
        self._known: set[str] = set()

    def __len__(self) -> int:
        return len(self._times)

    def add(self, created: float, uid: str) -> None:
        """Log a pod's creation time once; the oldest entries go beyond `capacity`."""
        if uid in self._known:
            return
        at = bisect.bisect_right(self._times, created)
        if at == 0 and len(self._times) >= self.capacity:
            return  # older than everything kept
        self._times.insert(at, created)
        self._uids.insert(at, uid)
        self._known.add(uid)
        while len(self._times) > self.capacity:
            self._times.pop(0)
            self._known.discard(self._uids.pop(0))

    def window(self, created: float, uid: str) -> np.ndarray:
        """(PRESSURE_WINDOW,) arrival times, oldest first, NaN where unknown, ending with this
        pod's own creation: the pods created before it (or with it) and the pod itself."""
        end = bisect.bisect_right(self._times, created)
        start = max(end - PRESSURE_WINDOW, 0)
        recent = zip(self._times[start:end], self._uids[start:end], strict=True)
        before = [t for t, u in recent if u != uid]
        times = [*before[-(PRESSURE_WINDOW - 1) :], created]
        out = np.full(PRESSURE_WINDOW, np.nan)
        out[PRESSURE_WINDOW - len(times) :] = times
        return out
