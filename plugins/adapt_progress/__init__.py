"""Progress display: a rich progress bar with loss, learning rate and samples/s, and a final table."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from adapt import PluginInfo, Run, Table, hookimpl


class ProgressTable(Table):
    refresh_per_second: float = Field(default=4, gt=0)
    """How often the progress bar redraws."""


class Progress:
    """One instance per run: it owns the live display."""

    def __init__(self) -> None:
        self.progress = None
        self.task = None

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="infrastructure", table=ProgressTable, summary="rich progress bar and final summary table"
        )

    @hookimpl
    def adapt_on_train_start(self, run: Run) -> None:
        if not run.is_main_process:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        table = run.table(ProgressTable)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=Console(stderr=True),
            refresh_per_second=table.refresh_per_second,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=run.max_steps, completed=run.step, stats="")
        if run.resumed_from is not None:
            self.progress.console.print(f"resumed from {run.resumed_from} at step {run.step}", highlight=False)

    @hookimpl
    def adapt_on_step_end(self, run: Run) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=run.step)

    @hookimpl
    def adapt_on_log(self, run: Run, logs: dict[str, float]) -> None:
        if self.progress is not None:
            terms = "".join(f" + {k} {v:.4f}" for k, v in logs.items() if k not in _NOT_TERMS)
            total = f" = {logs['total_loss']:.4f}" if "total_loss" in logs else ""
            speed = f"lr {logs['lr']:.2e}  {logs['samples_per_second']:.0f} samples/s"
            stats = f"loss {logs['loss']:.4f}{terms}{total}  {speed}"
            self.progress.update(self.task, stats=stats)

    @hookimpl
    def adapt_on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        if self.progress is not None:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            self.progress.console.print(f"eval at step {run.step}: {shown}", highlight=False)

    @hookimpl
    def adapt_on_train_error(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    @hookimpl
    def adapt_on_train_end(self, run: Run, summary: dict[str, Any]) -> None:
        if self.progress is None:
            return
        self.progress.stop()
        console = self.progress.console
        self.progress = None
        console.print(summary_table(summary))
        console.print(f"run directory: {run.output_dir}", highlight=False)


def summary_table(summary: dict[str, Any]):
    from rich.table import Table as RichTable

    table = RichTable(title=f"{summary['model']} · {' + '.join(summary['methods'])} · {summary['head']}")
    table.add_column("")
    table.add_column("value", justify="right")
    for name, value in summary["eval"].items():
        table.add_row(f"eval {name}", f"{value:.4f}")
    params = summary["parameters"]
    table.add_row(
        "trainable parameters",
        f"{params['trainable']:,} of {params['total']:,} ({params['trainable_percent']:.2f}%)",
    )
    table.add_row("steps / epochs", f"{summary['steps']:,} / {summary['epochs']}")
    table.add_row("train samples/s", f"{summary['train_samples_per_second']:.1f}")
    table.add_row("padding efficiency", f"{summary['padding_efficiency']:.2f}")
    table.add_row("train / total seconds", f"{summary['train_seconds']:.1f} / {summary['wall_seconds']:.1f}")
    for name, value in summary["memory"].items():
        table.add_row(name.replace("_", " "), f"{value:,.0f}")
    if "forgetting" in summary:
        forgetting = summary["forgetting"]
        table.add_row(f"drift (1 - CKA, {forgetting['reference_texts']} texts)", f"{forgetting['drift']:.4f}")
    if "stopped_early" in summary:
        table.add_row("stopped early", summary["stopped_early"])
    return table


# Keys of a training log that are not loss terms (the task loss is shown first, then each term).
_NOT_TERMS = {"step", "epoch", "loss", "total_loss", "lr", "samples_per_second"}
