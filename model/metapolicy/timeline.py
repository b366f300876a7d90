"""A readable timeline of a policy's life: one row per training or adaptation."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping

COLUMNS = (
    "time",
    "event",
    "nodes",
    "strategy",
    "retention [90% CI]",
    "S new/old",
    "took",
    "outcome",
)


def _retention(row: Mapping) -> str:
    value = row.get("performance_retention")
    if value is None:
        return "-"
    low, high = row.get("retention_interval") or (value, value)
    return f"{value:.3f} [{low:.2f}, {high:.2f}]"


def _scores(row: Mapping) -> str:
    new, old = row.get("candidate_score"), row.get("backup_score")
    if new is None:
        return "-"
    return f"{new:.3f}" if old is None else f"{new:.3f}/{old:.3f}"


def format_row(row: Mapping) -> list[str]:
    return [
        row.get("time", ""),
        row.get("event", "adapt"),
        f"{row.get('old_nodes', 0)} -> {row.get('new_nodes', 0)}",
        row.get("strategy") or "-",
        _retention(row),
        _scores(row),
        f"{row.get('adaptation_time', 0.0):.1f}s",
        row.get("outcome", ""),
    ]


def render(rows: Iterable[Mapping]) -> str:
    """Fixed-width table; each row's reason goes on its own indented line below it."""
    rows = list(rows)
    cells = [list(COLUMNS)] + [format_row(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row, line in zip(rows, cells[1:], strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if row.get("reason"):
            lines.append(f"      reason: {row['reason']}")
    return "\n".join(lines)


def progress(label: str) -> Callable[[str, float], None]:
    """A one-line progress display on stderr (a line per 10% when not a terminal)."""
    start, shown = time.perf_counter(), [-1]

    def update(stage: str, fraction: float) -> None:
        elapsed = time.perf_counter() - start
        if sys.stderr.isatty():
            bar = "#" * int(fraction * 30)
            sys.stderr.write(f"\r  {label}: {stage:<10} [{bar:<30}] {elapsed:5.1f}s")
            if fraction >= 1:
                sys.stderr.write("\n")
        elif int(fraction * 10) > shown[0]:
            shown[0] = int(fraction * 10)
            sys.stderr.write(f"  {label}: {stage} {fraction:4.0%} ({elapsed:.1f}s)\n")
        sys.stderr.flush()

    return update
