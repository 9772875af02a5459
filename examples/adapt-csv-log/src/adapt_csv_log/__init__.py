"""adapt-csv-log: every training log and evaluation of a run as one row of RUN_DIR/metrics.csv."""

from __future__ import annotations

import csv
import io
from typing import Any, Literal

from pydantic import Field

from adapt import PluginInfo, Run, Table, atomic_write_text, hookimpl

NAME = "csv-log"


class CsvLogTable(Table):
    """[plugins.csv-log]"""

    file: str = Field(default="metrics.csv", pattern=r"^[^/\\]+\.csv$", description="file name in the run directory")
    delimiter: Literal[",", ";", "\t"] = Field(default=",", description="the column separator")


class CsvLog:
    """A class entry point: adapt makes one instance per run, so the rows are this run's."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="infrastructure",
            table=CsvLogTable,
            summary="writes metrics.csv: train logs and evals",
            requires_api="1.0",  # only hooks that every 1.x has
        )

    @hookimpl
    def adapt_on_log(self, run: Run, logs: dict[str, float]) -> None:
        self._add(run, {"kind": "train", **logs})

    @hookimpl
    def adapt_on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self._add(run, {"kind": "eval", "step": run.step, **metrics})

    # A resumed run logs the steps after its checkpoint again: keep the rows up to the checkpoint.
    @hookimpl
    def adapt_checkpoint_state(self) -> dict[str, Any]:
        return {"rows": self.rows}

    @hookimpl
    def adapt_load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.rows = list(state["rows"])

    def _add(self, run: Run, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not run.is_main_process:  # every process logs; one writes
            return
        table: CsvLogTable = run.table(NAME)
        columns = list(dict.fromkeys(key for r in self.rows for key in r))  # first-seen order: kind, step, ...
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, delimiter=table.delimiter, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        # The whole file again, through a temporary file and a rename: a reader never sees half a row.
        atomic_write_text(run.output_dir / table.file, text.getvalue())
