"""The one seam between the training loop and the speed-ups: the loop enters `SpeedUps` and names none of them.

Each speed-up is exact (the same outputs and gradients up to rounding) and decides for itself where it applies:
CPU dropout masks from a fast generator, glibc keeping freed memory for the next step, torch's random ops inside
compiled code. The first-token trim and the frozen-prefix caches are applied where the model is built and
reported here. `summary()` is what summary.json's `throughput` says of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from adapt.speed.compiling import compiled_dropout
from adapt.speed.cpu import fast_dropout, keep_freed_memory
from adapt.speed.trim import is_trimmed

if TYPE_CHECKING:
    from adapt.run.context import Run


class SpeedUps:
    """The speed-ups one run's training uses, as its recipe and device allow."""

    def __init__(self, run: Run) -> None:
        cfg, cpu = run.recipe.train, run.accelerator.device.type == "cpu"
        self.run = run
        self.fast_dropout = cfg.fast_dropout and cpu
        self.keep_freed_memory = cfg.keep_freed_memory and cpu
        self.trimmed_top_block = False

    def before_loading(self) -> None:
        """Called before the memory baseline is taken and the weights load, so the measured peak is the run's."""
        if self.keep_freed_memory:
            keep_freed_memory()

    def note_model(self) -> None:
        """Called once the model is built, before a prefix cache takes a block's forward over."""
        self.trimmed_top_block = is_trimmed(self.run.model)

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """The context the loop trains in; everything it changed is undone on leaving."""
        with fast_dropout() if self.fast_dropout else contextlib.nullcontext(), compiled_dropout(self.run):
            yield

    def summary(self) -> dict[str, Any]:
        return {
            "fast_dropout": self.fast_dropout,
            "keep_freed_memory": self.keep_freed_memory,
            "trimmed_top_block": self.trimmed_top_block,
        }
