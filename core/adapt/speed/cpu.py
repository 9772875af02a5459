"""Two CPU costs that dwarf the arithmetic of a small model's training step, and what removes them.

Measured on MiniLM-L6 + LoRA (bench/peers.py): torch's CPU dropout draws every mask value from one
sequential Mersenne Twister (about 6 ms for a 32 x 40 x 384 activation, four times the matmul that made
it), and glibc hands large freed tensors back to the OS, so the next step faults the same pages in again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
_kept = False


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse: blocks up to 32 MiB come from the heap and the heap is never
    trimmed, so each step reuses the pages the last one faulted in. Resident memory then stays at its peak
    (which is what the memory plan predicts). Once per process; False where the C library is not glibc."""
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    ok = ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    ok = ok and mallopt(_M_TOP_PAD, 64 * 2**20) == 1
    _kept = ok
    return ok


def _bernoulli_(self, p: float = 0.5, generator=None):
    """aten::bernoulli_.float on a CPU tensor (what dropout calls, with p the keep probability): one seed from
    torch's generator, so runs stay reproducible and a resumed run draws what the interrupted one would have,
    then 16-bit values from numpy's SFC64 bit generator, compared against p (off from p by under 1e-5)."""
    import numpy as np
    import torch

    seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64, generator=generator))
    n = self.numel()
    bits = np.random.SFC64(seed).random_raw(-(-n // 4)).view(np.int16)[:n]  # four 16-bit values per draw
    bits = torch.from_numpy(bits).view(self.shape)
    if self.is_contiguous() and self.dtype.is_floating_point:  # compare straight into self: 6x faster than via bool
        return torch.lt(bits, round(p * 65536) - 32768, out=self)
    return self.copy_(bits < round(p * 65536) - 32768)


@contextlib.contextmanager
def fast_dropout() -> Iterator[None]:
    """Within the block, dropout masks on CPU tensors are drawn by `_bernoulli_` (about 3x faster); torch's
    own kernel is back afterwards. GPU tensors are untouched."""
    import warnings

    import torch

    library = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():  # "overriding a previously registered kernel": that is the point
            warnings.simplefilter("ignore", UserWarning)
            # never traced by dynamo (train.compile): numpy's generator is opaque to it, a graph break per mask
            library.impl("bernoulli_.float", torch.compiler.disable(_bernoulli_), "CPU")
        yield
    finally:
        library._destroy()
