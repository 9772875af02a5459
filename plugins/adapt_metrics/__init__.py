"""Metrics log: one JSON object per line in RUN_DIR/metrics.jsonl, for training logs and evaluations."""

from __future__ import annotations

import json
from typing import IO, Any

from adapt import PluginInfo, Run, atomic_write_text, hookimpl, json_text

FILE_NAME = "metrics.jsonl"


class MetricsLog:
    """One instance per run: it owns the open log file (appends are line-buffered and flushed)."""

    def __init__(self) -> None:
        self.file: IO[str] | None = None

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(kind="infrastructure", summary=f"writes {FILE_NAME}: train logs and eval metrics")

    def _write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json_text(record) + "\n")
            self.file.flush()

    @hookimpl
    def adapt_on_train_start(self, run: Run) -> None:
        if not run.is_main_process:
            return
        path = run.output_dir / FILE_NAME
        mode = "w"
        if run.resumed_from is not None and path.is_file():
            # Keep what was logged up to the checkpoint; the resumed run logs the steps after it again.
            atomic_write_text(path, "".join(f"{line}\n" for line in _records_up_to(path, run.step)))
            mode = "a"
        run.output_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(path, mode, encoding="utf-8", buffering=1)  # noqa: SIM115

    @hookimpl
    def adapt_on_log(self, logs: dict[str, float]) -> None:
        self._write({"kind": "train", **logs})

    @hookimpl
    def adapt_on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        self._write({"kind": "eval", "step": run.step, **metrics})

    @hookimpl
    def adapt_on_train_error(self) -> None:
        self.adapt_on_train_end()

    @hookimpl
    def adapt_on_train_end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _records_up_to(path, step: int) -> list[str]:
    """Lines of a metrics log up to `step` (a line cut short by a kill is dropped)."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    return kept
