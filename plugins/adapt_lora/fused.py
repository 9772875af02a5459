"""One autograd function per LoRA layer instead of PEFT's chain of operations.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as separate modules: two views per linear,
a full-size multiply and add in the forward pass, their backward nodes, and a sum of the two input
gradients. On a small model those full-size elementwise passes cost as much as the low-rank matmuls. Here
the scaling goes into the matmul (`addmm_`'s alpha), the low-rank path accumulates into the base path's
output and input gradient in place (no full-size copy), and autograd records one node. The result equals
PEFT's up to rounding (tested). Layers this does not cover (quantised bases, dropout, DoRA, several
adapters, a merged or disabled adapter, a base weight or bias that trains) keep PEFT's forward.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


@functools.cache
def _function(device_type: str) -> type[torch.autograd.Function]:
    """The function for one device type (autocast's custom_fwd/bwd need it), so that under bf16 autocast the
    backward pass runs in the forward pass's autocast state. Without autocast (the meta device of `adapt plan`)
    the functions are used as they are."""
    if torch.amp.is_autocast_available(device_type):
        custom_fwd = torch.amp.custom_fwd(device_type=device_type)
        custom_bwd = torch.amp.custom_bwd(device_type=device_type)
    else:
        custom_fwd = custom_bwd = _same

    class LoraLinear(torch.autograd.Function):
        @staticmethod
        @custom_fwd
        def forward(ctx, x, weight, bias, a, b, scaling):
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            h = x2 @ a.t()
            y = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
            # in place: an out-of-place addmm copies y first (autocast does not cast for in-place ops, hence `.to`)
            y.addmm_(h.to(y.dtype), b.t().to(y.dtype), alpha=scaling)
            ctx.save_for_backward(x2, h, weight, a, b)
            ctx.scaling, ctx.shape = scaling, shape
            return y.view(*shape[:-1], y.shape[-1])

        @staticmethod
        @custom_bwd
        def backward(ctx, grad):
            x2, h, weight, a, b = ctx.saved_tensors
            scaling, needs = ctx.scaling, ctx.needs_input_grad
            g = grad.reshape(-1, grad.shape[-1])
            gb = g @ b  # the gradient at the low-rank bottleneck
            grad_x = None
            if needs[0]:
                grad_x = g @ weight
                grad_x.addmm_(gb.to(grad_x.dtype), a.to(grad_x.dtype), alpha=scaling)
            grad_a = (gb.t() @ x2).mul_(scaling) if needs[3] else None
            grad_b = (h.t() @ g).t().mul_(scaling) if needs[4] else None  # 2x faster than g.t() @ h in MKL
            return (grad_x.view(ctx.shape) if grad_x is not None else None), None, None, grad_a, grad_b, None

    return LoraLinear


def _same(function):
    return function


def _fusable(layer: Any) -> bool:
    from peft.tuners.lora import Linear

    if type(layer) is not Linear or type(layer.base_layer) is not torch.nn.Linear:
        return False
    if len(layer.lora_A) != 1 or layer.fan_in_fan_out:
        return False
    name = next(iter(layer.lora_A))
    plain = type(layer.lora_dropout[name]) is torch.nn.Identity and not layer.use_dora.get(name, False)
    return plain and not getattr(layer, "lora_bias", {}).get(name, False)


def _fused_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return type(layer).forward(layer, x, *args, **kwargs)
    name = layer.active_adapters[0]
    if name not in layer.lora_A:
        return type(layer).forward(layer, x, *args, **kwargs)
    base, a, b = layer.base_layer, layer.lora_A[name].weight, layer.lora_B[name].weight
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):  # bias="all", unfrozen
        return type(layer).forward(layer, x, *args, **kwargs)
    kind = x.device.type
    autocast = torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)
    if not (x.dtype == a.dtype == base.weight.dtype or autocast):
        return type(layer).forward(layer, x, *args, **kwargs)
    return _function(kind).apply(x, base.weight, base.bias, a, b, layer.scaling[name])


def fuse_lora_layers(model: torch.nn.Module) -> int:
    """Give every LoRA layer that qualifies the fused forward (an instance attribute; the module tree, its
    parameters and PEFT's save/merge are unchanged); returns how many did."""
    count = 0
    for module in model.modules():
        if _fusable(module):
            module.forward = functools.partial(_fused_forward, module)
            count += 1
    return count
