"""Fault injection, for tests only: exit abruptly at one write boundary.

`METAPOLICY_FAULT_POINT=<boundary>:<stage>` (read once, when the operator starts) makes the
operator process `os._exit(FAULT_EXIT_CODE)` the first time it passes that point, the way a
kill -9 or an OOM kill would stop it: no cleanup, no status patch, no Event. Boundaries:
`after-save` (the candidate is stored), `after-activate` (the active pointer moved),
`after-status` (status patched), `after-event` (Event posted); stages: `train`, `zero-shot`,
`fine-tune`. Never set it in production: the operator would die on purpose.
"""

from __future__ import annotations

import logging
import os

FAULT_ENV = "METAPOLICY_FAULT_POINT"
FAULT_EXIT_CODE = 99
BOUNDARIES = ("after-save", "after-activate", "after-status", "after-event")
STAGES = ("train", "zero-shot", "fine-tune")

log = logging.getLogger(__name__)
_point = os.environ.get(FAULT_ENV) or None


def boundary(name: str, stage: str) -> None:
    """Die here if this is the configured fault point."""
    if _point is not None and _point == f"{name}:{stage}":
        log.critical("fault injection: exiting at %s:%s (%s)", name, stage, FAULT_ENV)
        logging.shutdown()
        os._exit(FAULT_EXIT_CODE)
