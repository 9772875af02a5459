"""`adapt compare RECIPE --vary KEY=A,B,C`: the same recipe once per value of one key, side by side.

Each value is a normal run directory in the comparison's folder, trained by an `adapt run` process of its
own: its peak memory is its own (not what an earlier run left allocated in a shared process), and a crash
or an out-of-memory kill of one value leaves the others standing. Running the same command again reuses the
runs that finished and resumes one that was interrupted, so a comparison survives an interruption too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapt.errors import RecipeError
from adapt.io import atomic_write_json
from adapt.plugin.manager import Catalogue
from adapt.recipe.loader import load_recipe, output_override, parse_value
from adapt.run.interrupts import Interrupted
from adapt.run.rundir import FINISHED, describe_stop, in_use, is_run, run_status


def parse_vary(text: str) -> tuple[str, list[Any]]:
    """`KEY=A,B,C` into the key and typed values (as `--set` types them). A list in TOML's own syntax also
    works, for values that hold commas: `KEY=["a,b", "c"]`."""
    key, sep, listed = text.partition("=")
    key = key.strip()
    if not sep or not key or not all(key.split(".")) or not listed.strip():
        raise RecipeError("--vary", [f"{text!r}: expected SECTION.KEY=A,B,C, e.g. methods.lora.r=4,8,16"], "the option")
    try:
        values = tomllib.loads(f"v = {listed.strip()}")["v"]
        if not isinstance(values, list):
            raise ValueError
    except (tomllib.TOMLDecodeError, ValueError):
        values = [parse_value(item.strip()) for item in listed.split(",")]
    if len(values) < 2:
        raise RecipeError(
            "--vary", [f"{text!r}: give at least two values to compare, separated by commas"], "the option"
        )
    return key, values


def toml_value(value: Any) -> str:
    """A value as `--set` reads it back with the same type (a string quoted, a list in brackets)."""
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _folder_name(index: int, value: Any) -> str:
    last = str(value).rstrip("/").rsplit("/", 1)[-1]  # a model's folder or hub name, not its whole path
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-.")[:60]
    return f"{index}-{slug or 'value'}"


def _stop_with_parent(parent: int):
    """For the child's start (Linux): the kernel sends it SIGTERM when this process dies, even by SIGKILL, so a
    killed comparison leaves no run training on its own (the child checkpoints and stops, as for any SIGTERM)."""

    def arrange() -> None:
        import ctypes

        try:
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # not Linux: the child outlives a killed parent
            return
        if os.getppid() != parent:  # the parent died before the request took hold
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange if sys.platform.startswith("linux") else None


def _wait_while_in_use(run_dir: Path, what: str, poll_seconds: float = 1.0) -> None:
    """A run still training in this value's folder (the child of an earlier comparison that was killed) is waited
    for, saying so, instead of being reported as failed."""
    if not in_use(run_dir):
        return
    print(f"{what}: a run is still training in {run_dir}; waiting for it to stop", file=sys.stderr, flush=True)
    while in_use(run_dir):
        time.sleep(poll_seconds)


@dataclass
class Comparison:
    recipe_path: str
    key: str
    values: list[Any]
    catalogue: Catalogue
    folder: Path
    overrides: list[str] = field(default_factory=list)
    #: The eval metric compare.png shows (default: the head's first).
    metric: str | None = None

    def recipes(self) -> list[Any]:
        """Every value's recipe, validated before the first run starts (all problems at once)."""
        recipes, problems = [], []
        for index, value in enumerate(self.values):
            run_dir = self.folder / _folder_name(index, value)
            try:
                recipes.append(
                    load_recipe(
                        self.recipe_path,
                        self.catalogue.infos,
                        [*self.overrides, output_override(run_dir)],
                        broken=self.catalogue.broken,
                        values={self.key: value},
                    )
                )
            except RecipeError as exc:
                problems.extend(f"--vary {self.key}={value!r}: {p}" for p in exc.problems)
        if problems:
            raise RecipeError(self.recipe_path, problems)
        return recipes

    def run(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for value, recipe in zip(self.values, self.recipes(), strict=True):
            run_dir = Path(recipe.output.dir)
            row: dict[str, Any] = {"value": value, "run_dir": str(run_dir), "status": "finished", "eval": {}}
            summary_file = run_dir / "summary.json"
            _wait_while_in_use(run_dir, f"{self.key}={value!r}")
            if run_status(run_dir) == FINISHED and summary_file.is_file():
                print(f"{self.key}={value!r}: the run in {run_dir} has already finished; reusing it", file=sys.stderr)
                code = 0
            else:
                code = self._train(value, run_dir)
            if code == 0 and summary_file.is_file():
                row.update(_from_summary(json.loads(summary_file.read_text(encoding="utf-8"))))
            elif code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
                rows.append({**row, "status": "interrupted"})
                self.write(rows)
                raise Interrupted(
                    code - 128, f"the run for {self.key}={value!r} was stopped ({describe_stop(run_dir)})"
                )
            else:
                row.update(status="failed", error=describe_stop(run_dir) if is_run(run_dir) else f"exit code {code}")
            rows.append(row)
            self.write(rows)
        return rows

    def _train(self, value: Any, run_dir: Path) -> int:
        """`adapt run` for one value, in a process of its own; returns its exit code. Ctrl-C reaches it from
        the terminal; a SIGTERM sent to this process is passed on, so that it checkpoints and stops."""
        sets = [*self.overrides, output_override(run_dir), f"{self.key}={toml_value(value)}"]
        command = [sys.executable, "-m", "adapt", "run", self.recipe_path]
        command += [arg for item in sets for arg in ("--set", item)]
        if is_run(run_dir):
            command.append("--resume")  # an interrupted run continues from its checkpoint
        child = subprocess.Popen(command, preexec_fn=_stop_with_parent(os.getpid()))

        def forward(signum: int, frame: Any) -> None:
            if signum != signal.SIGINT:  # a terminal's Ctrl-C already went to the whole process group
                child.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def chart_metric(self, rows: list[dict[str, Any]]) -> str | None:
        """The metric the chart shows: the one asked for, else the head's first (None before any result)."""
        if self.metric is not None:
            return self.metric
        return next((next(iter(r["eval"])) for r in rows if r["eval"]), None)

    def write(self, rows: list[dict[str, Any]]) -> None:
        from adapt.commands.charts import compare_chart

        atomic_write_json(self.folder / "compare.json", {"key": self.key, "runs": rows})
        metric = self.chart_metric(rows)
        if metric is not None:
            compare_chart(rows, self.key, metric, self.folder / "compare.png")


def _from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    memory = summary.get("memory", {})
    return {
        "eval": summary.get("eval", {}),
        "trainable": summary.get("parameters", {}).get("trainable"),
        "train_seconds": summary.get("train_seconds"),
        "train_samples_per_second": summary.get("train_samples_per_second"),
        "measured_peak_bytes": memory.get("measured_peak_bytes"),
    }
