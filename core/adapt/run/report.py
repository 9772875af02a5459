"""What a run reports in summary.json: metrics, parameters, time, throughput and peak memory."""

from __future__ import annotations

import resource
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapt.model.build import ParamCount
    from adapt.run.context import Run

VERSIONED = ("torch", "transformers", "peft", "accelerate", "datasets")  # besides adapt's own


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (MiB) and, where a GPU is used, peak CUDA allocation."""
    import torch

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # bytes there, KiB on Linux
        rss_kib //= 1024
    memory = {"peak_rss_mib": round(rss_kib / 1024, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        memory["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return memory


def proc_kib(file: str, field: str) -> int | None:
    """A figure in KiB from a Linux /proc file (`VmHWM` of /proc/self/status, `MemAvailable` of
    /proc/meminfo), else None."""
    try:
        for line in Path(file).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _status_kib(field: str) -> int | None:
    return proc_kib("/proc/self/status", field)


class MemoryProbe:
    """The peak memory that a run's model and training add: on CPU the peak resident memory above a baseline
    taken just before the model loads (the kernel's high-water mark is reset there, so data loading before it
    does not count; weights, gradients, optimizer state and activations do); on CUDA the peak allocation."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.peak_before_kib = _status_kib("VmHWM") or 0
        self.baseline_kib = _status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.resettable = True
        except OSError:
            self.resettable = False
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def measured(self) -> dict[str, float]:
        import torch

        memory: dict[str, float] = {}
        peak = _status_kib("VmHWM")
        if self.resettable and peak is not None and self.baseline_kib is not None:
            memory["peak_rss_mib"] = round(max(peak, self.peak_before_kib) / 1024, 1)
            memory["baseline_rss_mib"] = round(self.baseline_kib / 1024, 1)
            memory["measured_peak_bytes"] = (peak - self.baseline_kib) * 1024
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            memory["measured_peak_bytes"] = torch.cuda.max_memory_allocated()
        return memory


def show_notes(notes: list[str]) -> None:
    """Notes for the user (a run started afresh, a plugin table left out), one line each on stderr."""
    if notes:
        from rich.console import Console

        console = Console(stderr=True, highlight=False)
        for note in notes:
            console.print(f"note: {note}", soft_wrap=True, markup=False)


def versions() -> dict[str, str]:
    """summary.json -> versions: adapt's (read from its distribution, adapt-peft) and its main libraries'."""
    from adapt.plugin.manager import BUILTIN_DISTRIBUTION

    found = {}
    for name, distribution in {"adapt": BUILTIN_DISTRIBUTION, **{n: n for n in VERSIONED}}.items():
        try:
            found[name] = version(distribution)
        except PackageNotFoundError:
            pass
    return found


def run_precision(accelerator) -> str:
    """The precision a run computes in ("fp32", "bf16" or "fp16"), as its Accelerator was built."""
    return {"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision)


def _precision(run: Run) -> dict[str, str]:
    from adapt.train.precision import resolve_precision

    chosen = run_precision(run.accelerator)
    return {"precision": chosen, "precision_reason": resolve_precision(run.recipe.train.precision)[1]}


def _compiled(run: Run) -> dict[str, Any] | bool:
    if run.compiled is None:
        return False
    from adapt.speed.compiling import compile_report

    return compile_report(run.compiled)


def run_summary(
    run: Run,
    loop_stats: dict[str, Any],
    counts: list[ParamCount],
    extras: dict[str, Any],
    probe: MemoryProbe | None = None,
) -> dict[str, Any]:
    recipe = run.recipe
    final = counts[-1]
    return {
        "recipe": recipe.source,
        "model": recipe.model.name,
        "head": recipe.head,
        "methods": list(recipe.methods),
        "eval": loop_stats.pop("eval"),
        "parameters": {
            "total": final.total,
            "trainable": final.trainable,
            "trainable_percent": round(100 * final.trainable / max(final.total, 1), 4),
            "by_stage": [{"stage": c.stage, "trainable": c.trainable, "total": c.total} for c in counts],
        },
        "steps": run.step,
        "epochs": round(run.samples_seen / max(len(run.encoded["train"]), 1), 3),
        "train_samples": run.samples_seen,
        "wall_seconds": round(time.perf_counter() - run.started_at, 2),
        **loop_stats,
        "memory": {**peak_memory(), **(probe.measured() if probe else {})},
        "device": str(run.accelerator.device),
        "num_processes": run.accelerator.num_processes,
        **_precision(run),
        "compile": _compiled(run),
        "seed": recipe.train.seed,
        "versions": versions(),
        **extras,
    }
