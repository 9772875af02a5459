"""The charts of `adapt sweep` and `adapt compare`, drawn headless (matplotlib's Agg canvas, no pyplot
state, no display needed) and written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt.io import atomic_file

STATE_STYLE = {
    "complete": ("tab:blue", "o"),
    "pruned": ("tab:orange", "v"),
    "interrupted": ("tab:gray", "s"),  # at its last report; a later trial resumes it
    "fail": ("tab:red", "x"),
}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Any, path: Path) -> Path:
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def objective_chart(rows: list[dict[str, Any]], metric: str, goal: str, path: Path) -> Path:
    """The objective of each trial (pruned ones at their last report) and the best so far."""
    figure = _figure(7, 4)
    ax = figure.add_subplot()
    for state, (color, marker) in STATE_STYLE.items():
        points = [(r["number"], r["value"]) for r in rows if r["state"] == state and r["value"] is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), color=color, marker=marker, label=state, zorder=3)
    best, steps = None, []
    for row in sorted(rows, key=lambda r: r["number"]):
        if row["state"] == "complete" and row["value"] is not None:
            better = max if goal == "maximize" else min
            best = row["value"] if best is None else better(best, row["value"])
        if best is not None:
            steps.append((row["number"], best))
    if steps:
        ax.step(*zip(*steps, strict=True), where="post", color="tab:green", label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} ({goal})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    return save(figure, path)


def compare_chart(rows: list[dict[str, Any]], key: str, metric: str, path: Path) -> Path:
    """One bar per value of the varied key: its eval metric (missing for a run that failed)."""
    figure = _figure(max(4.0, 1.2 * len(rows) + 2), 4)
    ax = figure.add_subplot()
    labels = [str(r["value"]) for r in rows]
    heights = [r["eval"].get(metric, 0.0) if r["eval"] else 0.0 for r in rows]
    bars = ax.bar(range(len(rows)), heights, color=["tab:blue" if r["eval"] else "tab:red" for r in rows])
    for bar, row in zip(bars, rows, strict=True):
        text = f"{row['eval'][metric]:.4f}" if row["eval"] and metric in row["eval"] else row["status"]
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_xticks(range(len(rows)), labels, rotation=20 if max(map(len, labels), default=0) > 12 else 0)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    return save(figure, path)
