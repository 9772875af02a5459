"""SIGINT and SIGTERM during `adapt run`: what SLURM, Kubernetes and Ctrl-C send before a kill.

Outside the training loop a signal stops the run at once. Inside it, the first signal asks the loop to
finish the current optimizer step, write a checkpoint and stop; a second one stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal. A KeyboardInterrupt, so that no `except Exception` swallows it;
    `exit_code` is the shell's 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str = ""):
        self.signum = signum
        self.exit_code = 128 + signum
        self.message = message or f"stopped by {signal.Signals(signum).name}"
        super().__init__(self.message)


class StopSignals:
    """Installs the handlers for the length of a `with` block (main thread only; elsewhere it does nothing)."""

    def __init__(self, announce: bool = True):
        self.announce = announce
        self.graceful = False
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.graceful or self.requested is not None:
            # kept as well as raised: a library that catches the exception (datasets, while it fingerprints a map)
            # cannot hide the signal from the next `check`
            self.requested = self.requested or signum
            raise Interrupted(signum)
        self.requested = signum
        if self.announce:
            name = signal.Signals(signum).name
            sys.stderr.write(
                f"\n{name}: stopping after this optimizer step to write a checkpoint (send it again to stop at once)\n"
            )
            sys.stderr.flush()

    def check(self) -> None:
        """Outside the loop: stop now if a signal came, even one whose exception something swallowed."""
        if self.requested is not None and not self.graceful:
            raise Interrupted(self.requested)

    def agreed(self, accelerator: Any) -> int | None:
        """The signal every process acts on: with several processes, one that was signalled stops them all
        at the same step (one tiny all-reduce per optimizer step, only then)."""
        if accelerator.num_processes == 1:
            return self.requested
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.requested or 0], device=accelerator.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None
