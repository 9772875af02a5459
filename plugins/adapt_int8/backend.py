"""Whether this bitsandbytes build can run k-bit layers on this device, asked before the model loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapt import AdaptError

if TYPE_CHECKING:
    import torch


def check_backend(bits: int, device: torch.device, compute_dtype: torch.dtype) -> None:
    """Run one tiny quantised layer forward and backward; a clear error instead of a failure mid-load."""
    import bitsandbytes as bnb
    import torch

    try:
        if bits == 8:
            layer = bnb.nn.Linear8bitLt(16, 16, has_fp16_weights=False, threshold=6.0)
        else:
            layer = bnb.nn.Linear4bit(16, 16, compute_dtype=compute_dtype, quant_type="nf4")
        layer = layer.to(device)
        probe = torch.randn(2, 16, device=device, requires_grad=True)
        layer(probe).float().sum().backward()
    except Exception as exc:  # noqa: BLE001 - any failure means: not supported here
        other = "8" if bits == 4 else "4"
        raise AdaptError(
            f"methods.int8.bits: {bits}-bit layers do not run on {device} with bitsandbytes {bnb.__version__} "
            f"({type(exc).__name__}: {exc}); try bits = {other}, another device, or a newer bitsandbytes"
        ) from None
