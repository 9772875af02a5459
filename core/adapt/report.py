"""What a run reports in summary.json: metrics, parameters, time, throughput and peak memory."""

from __future__ import annotations

import resource
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapt.build import ParamCount
    from adapt.types import Run

VERSIONED = ("adapt", "torch", "transformers", "peft", "accelerate", "datasets")


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


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def run_summary(
    run: Run, loop_stats: dict[str, Any], counts: list[ParamCount], extras: dict[str, Any]
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
        "memory": peak_memory(),
        "device": str(run.accelerator.device),
        "num_processes": run.accelerator.num_processes,
        "precision": recipe.train.precision,
        "seed": recipe.train.seed,
        "versions": versions(),
        **extras,
    }
