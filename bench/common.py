"""What every benchmark does: `adapt run` a recipe with overrides in a fresh process, read summary.json."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Overrides that leave only training to time: no evaluation before the last step, no plots or forgetting probe.
TRAINING_ONLY = {"train.eval_every": 10**9, "plugins.disable": '["progress", "plots", "forgetting"]'}


# `adapt` from another source tree (a git worktree of an earlier revision) instead of the installed one: its core and
# plugins come first on sys.path, and an editable install's finder (which would resolve a module the tree lacks from
# the installed tree) is taken out. The CLI's module moved in 0.1.0 (adapt.cli, then adapt.commands.cli).
_FROM_SOURCE = """
import importlib, sys
source = sys.argv.pop(1)
sys.path[:0] = [source + "/core", source + "/plugins"]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "").lower()]
for name in ("adapt.commands.cli", "adapt.cli"):
    try:
        cli = importlib.import_module(name)
        break
    except ModuleNotFoundError:
        continue
assert cli.__file__.startswith(source), (cli.__file__, source)
sys.exit(cli.main(sys.argv[1:]))
"""


def adapt_command(source: Path | None = None) -> list[str]:
    """The command that runs `adapt`: the installed one, or the one in the source tree `source`."""
    return [sys.executable, "-m", "adapt"] if source is None else [sys.executable, "-c", _FROM_SOURCE, str(source)]


def run_recipe(
    recipe: str | Path,
    out: Path,
    overrides: dict[str, Any] | None = None,
    extra: list[str] | None = None,
    source: Path | None = None,
) -> dict[str, Any]:
    """The run's summary, plus `process_seconds`: the wall time of the whole command, start-up included.
    `extra`: further command-line arguments (`--resume`); `source`: run the adapt of that source tree."""
    settings = {"output.dir": out, "output.overwrite": "true", "plugins.disable": '["progress"]', **(overrides or {})}
    args = [a for key, value in settings.items() for a in ("--set", f"{key}={value}")]
    start = time.perf_counter()
    subprocess.run([*adapt_command(source), "run", str(recipe), *args, *(extra or [])], check=True)
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


def run_switched(args, setting: str, on: bool, out: Path) -> dict[str, Any]:
    """The summary of `args.recipe` (from `switch_arguments`) on `args.rows` rows at `args.precision`, with the
    recipe key `setting` on or off, nothing but training timed; its training samples/s as `samples_per_second`."""
    overrides = {
        "data.max_train_samples": args.rows,
        "train.precision": f'"{args.precision}"',
        setting: str(on).lower(),
        **TRAINING_ONLY,
    }
    summary = run_recipe(Path("recipes") / f"{args.recipe}.toml", out, overrides)
    return {**summary, "samples_per_second": summary["train_samples_per_second"]}


def switch_pairs(pairs: int, measure: Callable[[bool, Path], dict[str, Any]]) -> tuple[list[dict[bool, dict]], float]:
    """`measure(on, directory)` with a switch on and off, one after the other, `pairs` times (so drift in the
    machine's speed falls on both): each pair's results by the switch, and the median of the pairs' ratios of
    training samples/s, on over off."""
    import statistics
    import tempfile

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(1, pairs + 1):
            results.append({on: measure(on, Path(tmp) / f"{pair}-{on}") for on in (True, False)})
    ratio = statistics.median(r[True]["samples_per_second"] / r[False]["samples_per_second"] for r in results)
    return results, ratio


def switch_arguments(description: str, rows: int, recipe: str, out: str):
    """The command line of a bench that runs a recipe with a switch on and off (`switch_pairs`)."""
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--recipe", default=recipe)
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser.parse_args()
