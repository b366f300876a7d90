"""Bounded polling: every wait in e2e is a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class E2EFailure(AssertionError):
    """A scenario step did not hold; the message says what was expected and what was seen.

    An AssertionError, so pytest reports it as a test failure rather than an error."""


def poll(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.2,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call `predicate` until it returns something truthy and return that.

    Fails with `what` (and `describe()`, the last state seen) once `timeout` seconds have
    passed; the predicate itself may raise `E2EFailure` to stop early when the wait is
    already hopeless (e.g. more adaptations than expected).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"; {describe()}" if describe is not None else ""
            raise E2EFailure(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
