"""How much of the machine a run used: useful FLOP/s against the device's measured matmul peak.

The FLOPs of a training step are counted once, on the run's first micro-batch (torch's FlopCounterMode
counts matmuls, attention and convolutions in the forward and backward passes, the optimizer's elementwise
work not), per padded token; useful work is that per-token cost times the real (unpadded) tokens trained on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

_peaks: dict[tuple[str, str], float] = {}


class StepFlops:
    """Counts the FLOPs of the first micro-batch it is given; inert after that."""

    def __init__(self) -> None:
        self.per_token: float | None = None

    @contextlib.contextmanager
    def first(self, batch: dict[str, Any]) -> Iterator[None]:
        if self.per_token is not None:
            yield
            return
        from torch.utils.flop_counter import FlopCounterMode

        tokens = _padded_tokens(batch)
        with FlopCounterMode(display=False) as counter:
            yield
        if tokens:
            self.per_token = counter.get_total_flops() / tokens


def _padded_tokens(batch: dict[str, Any]) -> int:
    ids = batch.get("input_ids")
    return int(ids.numel()) if ids is not None and hasattr(ids, "numel") else 0


def matmul_peak(device, precision: str) -> float | None:
    """FLOP/s of a large square matmul in the run's precision on its device (best of three; measured once per
    process): the ceiling that "useful FLOP/s share" is relative to."""
    import torch

    key = (str(device), precision)
    if key not in _peaks:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        n = 4096 if device.type == "cuda" else 2048  # 200 MiB on a GPU at most: the run's model is still there
        try:
            a = torch.randn(n, n, dtype=dtype, device=device)
            b = torch.randn(n, n, dtype=dtype, device=device)
            best = float("inf")
            for _ in range(4):
                _sync(device)
                start = time.perf_counter()
                a @ b
                _sync(device)
                best = min(best, time.perf_counter() - start)
        except (RuntimeError, torch.OutOfMemoryError):  # a full device must not fail a finished run
            return None
        _peaks[key] = 2 * n**3 / best
    return _peaks[key]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput_summary(
    flops: StepFlops, real_tokens: float, train_seconds: float, device, precision: str, processes: int
) -> dict[str, Any]:
    """summary.json's "throughput": useful FLOPs per second per process and their share of the matmul peak."""
    if flops.per_token is None or train_seconds <= 0:
        return {}
    useful = flops.per_token * real_tokens / train_seconds / processes
    found = {"flops_per_token": round(flops.per_token), "useful_flops_per_second": round(useful)}
    peak = matmul_peak(device, precision)
    if peak:
        found.update(matmul_peak_flops_per_second=round(peak), useful_flops_share=round(useful / peak, 4))
    return found
