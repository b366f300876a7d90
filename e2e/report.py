"""MetaPolicy status.history as a timeline, for the demo and e2e reports.

The records are rendered by ``metapolicy.timeline`` (shared with ``kubectl metapolicy``);
these names stay for the callers of this module.
"""

from __future__ import annotations

from metapolicy.timeline import event_name
from metapolicy.timeline import history_rows as timeline_rows
from metapolicy.timeline import render_history as timeline

__all__ = ["event_name", "timeline", "timeline_rows"]
