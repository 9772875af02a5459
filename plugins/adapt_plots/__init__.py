"""Plots: RUN_DIR/curves.png, the training loss, learning rate and each eval metric against the step.

Drawn headless with matplotlib's Agg canvas (no display, no pyplot state) when the run ends, and also when it
fails or is interrupted, so the curves up to that point are there to look at. The history travels with the
checkpoints, so a resumed run's curves start at step 1.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from adapt import PluginInfo, Run, Table, atomic_file, hookimpl

FILE_NAME = "curves.png"


class PlotsTable(Table):
    dpi: int = Field(default=100, ge=50, le=600)
    """Resolution of the written image."""


class Plots:
    def __init__(self) -> None:
        self.train: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(kind="infrastructure", table=PlotsTable, summary=f"draws {FILE_NAME}: loss, lr and metrics")

    @hookimpl
    def adapt_on_log(self, logs: dict[str, float]) -> None:
        self.train.append(dict(logs))

    @hookimpl
    def adapt_on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self.evals.append({"step": run.step, **metrics})

    @hookimpl
    def adapt_checkpoint_state(self) -> dict[str, Any]:
        return {"train": self.train, "evals": self.evals}

    @hookimpl
    def adapt_load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.train, self.evals = list(state["train"]), list(state["evals"])

    @hookimpl
    def adapt_on_train_end(self, run: Run) -> None:
        if run.is_main_process:
            self.draw(run)

    @hookimpl
    def adapt_on_train_error(self, run: Run) -> None:
        if run.is_main_process and (self.train or self.evals):
            try:
                self.draw(run)
            except Exception:  # noqa: BLE001 - the run's own error is the one to report
                pass

    def draw(self, run: Run) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        table = run.table(PlotsTable)
        # Panels of (title, [(label, records, key)]): the training loss and its terms with the eval loss,
        # the learning rate, then each other eval metric.
        losses = dict.fromkeys(k for r in self.train for k in r if k not in _NOT_LOSSES)
        metrics = dict.fromkeys(k for e in self.evals for k in e if k != "step")
        loss_lines = [(f"train {k}" if k == "loss" else k, self.train, k) for k in losses]
        if "loss" in metrics:
            del metrics["loss"]
            loss_lines.append(("eval loss", self.evals, "loss"))
        panels = [("loss", loss_lines), ("learning rate", [("lr", self.train, "lr")])]
        panels += [(f"eval {m}", [(m, self.evals, m)]) for m in metrics]
        columns = min(3, len(panels))
        rows = -(-len(panels) // columns)
        figure = Figure(figsize=(4.2 * columns, 3.2 * rows), dpi=table.dpi, layout="constrained")
        FigureCanvasAgg(figure)
        for index, (title, lines) in enumerate(panels):
            ax = figure.add_subplot(rows, columns, index + 1)
            for label, records, key in lines:
                points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o" if records is self.evals else None, label=label)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if len(lines) > 1:
                ax.legend(fontsize="small")
        figure.suptitle(f"{run.recipe.model.name} · {' + '.join(run.recipe.methods)} · {run.recipe.head}")
        with atomic_file(run.output_dir / FILE_NAME) as tmp:
            figure.savefig(tmp, format="png")


# Keys of a training log that are not a loss (every other key is a loss term, drawn with the loss).
_NOT_LOSSES = {"step", "epoch", "lr", "samples_per_second"}
