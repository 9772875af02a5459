"""What every benchmark does: `adapt run` a recipe with overrides in a fresh process, read summary.json."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Overrides that leave only training to time: no evaluation before the last step, no plots or forgetting probe.
TRAINING_ONLY = {"train.eval_every": 10**9, "plugins.disable": '["progress", "plots", "forgetting"]'}


def run_recipe(
    recipe: str | Path, out: Path, overrides: dict[str, Any] | None = None, extra: list[str] | None = None
) -> dict[str, Any]:
    """The run's summary, plus `process_seconds`: the wall time of the whole command, start-up included.
    `extra`: further command-line arguments (`--resume`)."""
    settings = {"output.dir": out, "output.overwrite": "true", "plugins.disable": '["progress"]', **(overrides or {})}
    args = [a for key, value in settings.items() for a in ("--set", f"{key}={value}")]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "adapt.cli", "run", str(recipe), *args, *(extra or [])], check=True)
    summary = json.loads((Path(out) / "summary.json").read_text())
    summary["process_seconds"] = time.perf_counter() - start
    return summary


def cpu_model() -> str:
    """The CPU's model name (every figure is given with it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def publish(intro: str, columns: list[str], rows: list[str], out: Path) -> str:
    """A Markdown table under one line of context, written to `out` and printed."""
    lines = [intro, "", "| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |", *rows]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return text
