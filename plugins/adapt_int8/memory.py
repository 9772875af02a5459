"""Memory of a model's weights, as loaded and as they would be unquantised."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapt import count_parameters

if TYPE_CHECKING:
    import torch


def weight_memory(model: torch.nn.Module) -> dict[str, float]:
    """MiB of the weights now, and at the dtype of the unquantised floating-point weights."""
    now = sum(p.numel() * p.element_size() for p in model.parameters())
    now += sum(b.numel() * b.element_size() for b in model.buffers())
    float_size = max((p.element_size() for p in model.parameters() if p.is_floating_point()), default=4)
    _, total = count_parameters(model)
    full = total * float_size + sum(b.numel() * b.element_size() for b in model.buffers())
    quantised = sum(1 for p in model.parameters() if not p.is_floating_point() or hasattr(p, "quant_state"))
    return {
        "weights_mib_unquantised": round(full / 2**20, 1),
        "weights_mib_quantised": round(now / 2**20, 1),
        "quantised_tensors": quantised,
    }
