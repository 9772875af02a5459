"""How much of the machine a run used: useful FLOP/s against the device's measured matmul peak.

The FLOPs of a training step are counted once, on the run's first micro-batch (torch's FlopCounterMode
formulas for matmuls, attention and convolutions in the forward and backward passes, the optimizer's
elementwise work not), per padded token; useful work is that per-token cost times the real (unpadded) tokens trained on.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

_peaks: dict[tuple[str, str], float] = {}


class StepFlops:
    """Counts the FLOPs of the first micro-batch it is given; inert after that."""

    def __init__(self) -> None:
        self.per_token: float | None = None

    @contextlib.contextmanager
    def first(self, batch: dict[str, Any], compiled: bool = False) -> Iterator[None]:
        """`compiled`: the model has compiled parts, which run uncompiled for the counted micro-batch (dynamo
        gives up for good on code it first meets under a dispatch mode)."""
        if self.per_token is not None:
            yield
            return
        import torch

        set_stance = getattr(torch.compiler, "set_stance", None)  # torch 2.6 and later
        if compiled and set_stance is None:
            self.per_token = float("nan")  # not counted: summary.json then gives no FLOP figures
            yield
            return
        tokens = _padded_tokens(batch)
        eager = set_stance("force_eager") if compiled else contextlib.nullcontext()
        with eager, _count_flops_mode() as counter:
            yield
        if tokens:
            self.per_token = counter.total / tokens


def _count_flops_mode():
    """A dispatch mode that sums FlopCounterMode's formulas over the ops it sees.

    Not FlopCounterMode itself: its module tracker hooks the tensors that activation checkpointing recomputes in
    the backward pass and keeps them all alive, so a checkpointed step held the whole model's activations at
    once (MiniLM, batch 32 x 53: 363 MiB live against 97 MiB), and the step it counts is the run's first and
    longest one, whose memory is the run's peak."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    formulas = FlopCounterMode(display=False).flop_registry

    class CountFlops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            packet = func._overloadpacket
            if packet not in formulas and isinstance(func, torch._ops.OpOverload):
                with self:  # a composite op: count the ops it is made of, as FlopCounterMode does
                    result = func.decompose(*args, **kwargs)
                if result is not NotImplemented:
                    return result
            out = func(*args, **kwargs)
            if packet in formulas:
                self.total += formulas[packet](*args, **kwargs, out_val=out)
            return out

    return CountFlops()


def _padded_tokens(batch: dict[str, Any]) -> int:
    ids = batch.get("input_ids")
    return int(ids.numel()) if ids is not None and hasattr(ids, "numel") else 0


def matmul_peak(device, precision: str, budget_seconds: float = 2.0) -> float | None:
    """FLOP/s of square matmuls in the run's precision on its device (the best seen; measured once per process):
    the ceiling that "useful FLOP/s share" is relative to. Sizes grow from 256 while a product takes under a tenth
    of the budget, up to 4096 on a GPU and 2048 on a CPU, and the whole measurement stays within about
    `budget_seconds`: on a CPU without native bf16 a 2048 bf16 product took minutes."""
    import torch

    key = (str(device), precision)
    if key not in _peaks:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        largest = 4096 if device.type == "cuda" else 2048  # 200 MiB on a GPU at most: the run's model is still there
        best, n, started = 0.0, 256, time.perf_counter()
        try:
            while n <= largest:
                a = torch.randn(n, n, dtype=dtype, device=device)
                b = torch.randn(n, n, dtype=dtype, device=device)
                fastest = float("inf")
                for _ in range(3):
                    _sync(device)
                    start = time.perf_counter()
                    a @ b
                    _sync(device)
                    fastest = min(fastest, time.perf_counter() - start)
                    if time.perf_counter() - started > budget_seconds:
                        break
                best = max(best, 2 * n**3 / fastest)
                if fastest > budget_seconds / 10 or time.perf_counter() - started > budget_seconds:
                    break
                n *= 2
        except (RuntimeError, torch.OutOfMemoryError):  # a full device must not fail a finished run
            return None
        _peaks[key] = best
    return _peaks[key] or None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput_summary(
    flops: StepFlops, real_tokens: float, train_seconds: float, device, precision: str, processes: int
) -> dict[str, Any]:
    """summary.json's "throughput": useful FLOPs per second per process and their share of the matmul peak."""
    if flops.per_token is None or math.isnan(flops.per_token) or train_seconds <= 0:
        return {}
    useful = flops.per_token * real_tokens / train_seconds / processes
    found = {"flops_per_token": round(flops.per_token), "useful_flops_per_second": round(useful)}
    peak = matmul_peak(device, precision)
    if peak:
        found["matmul_peak_flops_per_second"] = round(peak)
        if useful <= peak:
            found["useful_flops_share"] = round(useful / peak, 4)
        else:  # the run's matmuls outran the measured ones: the ceiling is wrong, so there is no share to give
            found["useful_flops_share"] = None
            found["useful_flops_share_note"] = (
                f"the run did {useful / peak:.2f}x the measured matmul peak at {precision}: the measurement missed "
                "the kernels the run used, so no share is given"
            )
    return found
