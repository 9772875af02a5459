"""Bytes of optimizer state each built-in optimizer keeps, for the memory plan (its options are validated in
adapt.recipe.optimizers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapt.model.modeling import parameter_count
from adapt.recipe.optimizers import OPTIONS

if TYPE_CHECKING:
    import torch


def state_bytes(optimizer: str, options: dict[str, Any], params: list[torch.Tensor]) -> int | None:
    """Bytes of optimizer state the built-in `optimizer` keeps for `params` (meta tensors will do), or None for
    an optimizer adapt does not know (a plugin's)."""
    table = OPTIONS.get(optimizer)
    if table is None:
        return None
    opts = table.model_validate(options)
    total, eight_bit_maps = 0, False
    for p in params:
        n, size = parameter_count(p), p.element_size()
        if optimizer == "adamw":
            total += 2 * n * size  # exp_avg and exp_avg_sq, in the parameter's dtype
        elif optimizer in ("adamw-8bit", "paged-adamw-8bit"):
            # two 1-byte states plus one fp32 absmax per 256-value block each; small tensors stay 32-bit
            total += 2 * (n + 4 * -(-n // 256)) if n >= opts.min_8bit_size else 2 * n * 4
            eight_bit_maps = eight_bit_maps or n >= opts.min_8bit_size
        elif optimizer == "adafactor":
            # factored second moment: a row and a column vector for matrices, the full moment for vectors
            total += (p.shape[-2] + p.shape[-1]) * size if p.dim() >= 2 else n * size
        elif optimizer == "sgd" and opts.momentum > 0:
            total += n * size
    return total + (2 * 256 * 4 if eight_bit_maps else 0)  # the two 256-value quantisation maps, shared

