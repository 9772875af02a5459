"""`train.compile`: torch.compile the model for training, in place.

In place (`Module.compile`), not wrapped: parameter names, `isinstance` checks, forward hooks and
checkpoints stay what every plugin expects. "blocks" compiles each transformer block on its own (regional
compilation): the blocks share one code object, so the first block's compile serves the others and the run
starts far sooner than with the whole model compiled. What compiled, its graphs, graph breaks and compile
seconds go to summary.json.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

import torch

from adapt.errors import AdaptError
from adapt.model.modeling import find_blocks


def compile_model(model: torch.nn.Module, scope: str, mode: str, backend: str, device_kind: str) -> dict[str, Any]:
    """Compile `model` (scope "blocks" or "model") with torch.compile's `mode` and `backend`; returns
    summary.json's "compile" entry (its counters are filled in by `compile_report`)."""
    if backend == "inductor" and device_kind == "cpu" and not _cxx_compiler():
        raise AdaptError(
            "train.compile: TorchInductor compiles C++ for a CPU, and no C++ compiler was found (g++, c++ or the "
            'CXX variable); install one (`apt install g++`), choose train.compile_backend = "aot_eager", or set '
            "train.compile = false"
        )
    _reset_counters()
    options = {"mode": None if mode == "default" else mode, "backend": backend}
    if scope == "blocks":
        try:
            _, blocks = find_blocks(model)
        except ValueError:
            scope = "model"  # no block stack: the whole model is the region
        else:
            for block in blocks:
                block.compile(**options)
            return {"scope": "blocks", "modules": len(blocks), "mode": mode, "backend": backend}
    model.compile(**options)
    return {"scope": scope, "modules": 1, "mode": mode, "backend": backend}


@contextlib.contextmanager
def compiled_dropout(run) -> Iterator[None]:
    """While a compiled run trains on a CPU: compiled code calls torch's random ops (and so fast dropout's kernel)
    instead of generating its own random numbers, whose CPU kernels made a compiled MiniLM step about 30% slower
    (bench/compile_dropout.py, with dropout on and off)."""
    if run.compiled is None or run.compiled["backend"] != "inductor" or run.accelerator.device.type != "cpu":
        yield
        return
    import torch._inductor.config

    with torch._inductor.config.patch(fallback_random=True):
        yield


def compile_report(entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` with what dynamo did since `compile_model`: graphs compiled (0 where this process had compiled the
    same blocks before, for an earlier run: the code is reused), graph breaks by reason (each is Python that runs
    uncompiled between two graphs) and the seconds spent compiling."""
    from torch._dynamo import utils

    breaks: dict[str, int] = {}
    for reason, count in utils.counters["graph_break"].items():  # dynamo's reasons run to many lines of hints
        first = reason.strip().splitlines()[0][:200]
        breaks[first] = breaks.get(first, 0) + count
    seconds = sum(sum(utils.compilation_time_metrics.get(name, [])) for name in _COMPILE_TIMERS)
    return {
        **entry,
        "graphs": int(utils.counters["stats"]["unique_graphs"]),
        "graph_breaks": sum(breaks.values()),
        "graph_break_reasons": dict(sorted(breaks.items(), key=lambda kv: -kv[1])[:5]),
        "compile_seconds": round(seconds, 2),
    }


# dynamo's timers of a forward graph's compile and of its backward graph's (compiled lazily, on the first backward)
_COMPILE_TIMERS = ("_compile.compile_inner", "backward._backward_impl")


def _reset_counters() -> None:
    from torch._dynamo import utils

    utils.counters.clear()
    utils.compilation_time_metrics.clear()


def _cxx_compiler() -> bool:
    return bool(os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"))
