"""PNG figures from the rows the benchmarks write, so a result can be read at a glance and
regenerated from the stored JSON without rerunning anything.

    python -m benchmarks.plots                      # benchmarks/results/*.json -> *.png
    python -m benchmarks.plots --out-dir /tmp/plots
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI

import matplotlib.pyplot as plt
import numpy as np

DELTA_ORDER = (1, 2, 4, 8, 12, -1, -2, -4)
STRATEGIES = (
    "zero_padding",
    "weight_interpolation",
    "knowledge_distillation",
    "attention_based",
    "scratch",
)
RETENTION_TARGET = 0.97


def latency_bars(rows: list[dict], path: str) -> None:
    """Stacked p50 stage times per config: which stage the pipeline's time goes to. Every row
    lists the same stages in pipeline order; a stage that never ran in a config is None."""
    labels = [f"{r['arch']}\nN={r['nodes']} h={r['hidden']}" for r in rows]
    stages = list(rows[0]["stages"])
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4.5))
    bottom = np.zeros(len(rows))
    for stage in stages:
        heights = np.array([(r["stages"].get(stage) or {}).get("p50", 0.0) for r in rows])
        ax.bar(labels, heights, bottom=bottom, label=stage)
        bottom += heights
    for x, r in enumerate(rows):
        ax.text(x, bottom[x], f"{r['total']['p50']:.1f}s", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds (p50)")
    ax.set_title("Adaptation pipeline wall time by stage")
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], names[::-1], fontsize=8)  # top to bottom, as stacked
    save(fig, path)


def delta_order(deltas) -> list[int]:
    """The benchmark's order (growth, then shrinkage), with any other delta after it."""
    deltas = set(deltas)
    return [d for d in DELTA_ORDER if d in deltas] + sorted(deltas - set(DELTA_ORDER))


def retention_vs_delta(rows: list[dict], path: str) -> None:
    """Adapted retention per strategy against the change, min/max over seeds, next to what the
    auto choice kept before fine-tuning and the 0.97 target."""
    archs = sorted({r["arch"] for r in rows})
    fig, axes = plt.subplots(1, len(archs), figsize=(7 * len(archs), 4.5), squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        mine = [r for r in rows if r["arch"] == arch]
        deltas = delta_order(r["delta"] for r in mine)
        x = np.arange(len(deltas))
        for i, strategy in enumerate(STRATEGIES):
            picked = [r for r in mine if r["strategy"] == strategy]
            offset = (i - (len(STRATEGIES) - 1) / 2) * 0.1
            errorbar(ax, x + offset, spread(picked, deltas, "adapted_retention"), strategy, "o")
        auto = [r for r in mine if r["strategy"] == r.get("auto")]
        mean, _, _ = spread(auto, deltas, "adapted_retention")
        ax.plot(x, mean, "k-", lw=1.5, label="auto, adapted")
        mean, _, _ = spread(auto, deltas, "zero_shot_retention")
        ax.plot(x, mean, "k--", lw=1.2, label="auto, zero-shot")
        ax.axhline(RETENTION_TARGET, color="red", lw=0.8, ls=":", label="target 0.97")
        ax.set_xticks(x, [f"{d:+d}" for d in deltas])
        ax.set_xlabel("Δ nodes")
        ax.set_ylabel("retention")
        ax.set_title(arch)
    outside_legend(axes[0][-1])
    save(fig, path)


def spread(rows: list[dict], deltas: list[int], key: str):
    """Mean, min and max of `key` over seeds per delta (NaN where nothing was measured)."""
    stats = []
    for delta in deltas:
        values = [r[key] for r in rows if r["delta"] == delta and r.get(key) is not None]
        stats.append((np.mean(values), np.min(values), np.max(values)) if values else (np.nan,) * 3)
    return tuple(np.array(column) for column in zip(*stats, strict=True))


def errorbar(ax, x, stats, label: str, marker: str) -> None:
    mean, low, high = stats
    if np.isnan(mean).all():
        return
    ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt=marker, ms=4, capsize=2, label=label)


def learning_curves(curves: list[dict], path: str) -> None:
    """S against environment steps: thin lines per delta (mean over seeds), thick lines the mean
    over all deltas; adapted solid, scratch dashed. Shows how early adapting beats retraining."""
    archs = sorted({c["arch"] for c in curves})
    fig, axes = plt.subplots(1, len(archs), figsize=(7 * len(archs), 4.5), squeeze=False)
    styles = {"adapted": ("tab:blue", "-"), "scratch": ("tab:orange", "--")}
    for ax, arch in zip(axes[0], archs, strict=True):
        mine = [c for c in curves if c["arch"] == arch]
        for kind, (color, style) in styles.items():
            by_delta = defaultdict(list)
            for c in mine:
                if c["kind"] == kind:
                    by_delta[c["delta"]].append(c)
            if not by_delta:
                continue
            grid = np.unique(np.concatenate([c["steps"] for c in mine if c["kind"] == kind]))
            means = [mean_curve(group, grid) for group in by_delta.values()]
            for m in means:
                ax.plot(grid, m, color=color, ls=style, lw=0.7, alpha=0.35)
            ax.plot(grid, np.mean(means, 0), color=color, ls=style, lw=2.2, label=f"{kind}, mean")
        ax.axhline(
            np.mean([c["target"] for c in mine]),
            color="red",
            lw=0.8,
            ls=":",
            label="target (95% of pre-resize S)",
        )
        ax.set_xlabel("environment steps")
        ax.set_ylabel("S")
        ax.set_title(f"{arch}: thin lines one Δ each")
    outside_legend(axes[0][-1])
    save(fig, path)


def mean_curve(curves: list[dict], grid: np.ndarray) -> np.ndarray:
    """Seeds may log at different steps: interpolate onto one grid before averaging."""
    return np.mean([np.interp(grid, c["steps"], c["score"]) for c in curves], 0)


def outside_legend(ax) -> None:
    """Right of the last panel: inside, it hides points whatever corner it picks."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def save(fig, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--out-dir", help="default: next to the JSON files")
    args = parser.parse_args()
    results = Path(args.results)
    out = Path(args.out_dir or results)
    retention = load(results / "retention.json")
    latency = load(results / "latency.json")
    made = []
    if retention and retention.get("rows"):  # the names benchmarks.retention writes
        made.append(out / "retention-retention.png")
        retention_vs_delta(retention["rows"], str(made[-1]))
    if retention and retention.get("curves"):
        made.append(out / "retention-curves.png")
        learning_curves(retention["curves"], str(made[-1]))
    if latency and latency.get("rows"):
        made.append(out / "latency.png")
        latency_bars(latency["rows"], str(made[-1]))
    print("\n".join(map(str, made)) or f"nothing to plot in {results}")


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    main()
