"""Bottleneck adapters placed generically: after the attention output projection and/or the
feed-forward output projection of every transformer block, whatever the architecture family."""

from __future__ import annotations

import torch
from torch import nn

from adapt import RecipeError, find_blocks

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}
ATTENTION_NAMES = ("attention", "attn")


class Adapter(nn.Module):
    """h + up(act(down(h))), with `up` zero-initialised so a new adapter is the identity."""

    def __init__(self, size: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = nn.Linear(size, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        update = self.up(self.act(self.down(hidden.to(self.down.weight.dtype))))
        return hidden + update.to(hidden.dtype)


def _projections(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear layers in registration order (nn.Linear and GPT-2's Conv1D)."""
    from transformers.pytorch_utils import Conv1D

    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear | Conv1D)]


def _out_features(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.nf


def adapter_sites(model: nn.Module, placement: str) -> list[tuple[str, nn.Module]]:
    """(name, projection) pairs an adapter follows: per block, the attention output projection (houlsby
    only) and the feed-forward output projection (both placements)."""
    prefix, blocks = find_blocks(model)
    sites = []
    for index, block in enumerate(blocks):
        attention = [(n, m) for n, m in block.named_children() if any(a in n.lower() for a in ATTENTION_NAMES)]
        if not attention:
            raise ValueError(
                f"cannot find the attention module in {type(block).__name__} (block {index} of "
                f"{type(model).__name__}); expected a child named like 'attention' or 'attn'"
            )
        attn_name, attn = attention[0]
        attn_proj = _projections(attn)
        ffn_proj = [(n, m) for n, m in _projections(block) if not n.startswith(f"{attn_name}.") and n != attn_name]
        if not attn_proj or not ffn_proj:
            raise ValueError(f"cannot find the output projections of {type(block).__name__} in {type(model).__name__}")
        chosen = [(f"{attn_name}.{attn_proj[-1][0]}", attn_proj[-1][1])] if placement == "houlsby" else []
        chosen.append(ffn_proj[-1])
        sites.extend((f"{prefix}.{index}.{name}", layer) for name, layer in chosen)
    return sites


def _apply_adapter(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.adapter(output)


def inject(model: nn.Module, placement: str, reduction_factor: int, activation: str) -> list[str]:
    """Add an adapter after each site's output; the base's parameter names do not change (the adapter
    lives at `<projection>.adapter`). Returns the names of the adapted projections."""
    names = []
    for name, layer in adapter_sites(model, placement):
        size = _out_features(layer)
        if size // reduction_factor < 1:
            raise RecipeError(
                f"methods.adapters.reduction_factor: {reduction_factor} leaves no bottleneck on this model, whose "
                f"projections are {size} wide ({size} // {reduction_factor} = 0 units); use at most {size}"
            )
        adapter = Adapter(size, size // reduction_factor, activation)
        weight = next(layer.parameters())
        adapter.to(device=weight.device, dtype=weight.dtype if weight.is_floating_point() else torch.float32)
        layer.add_module("adapter", adapter)
        layer.register_forward_hook(_apply_adapter)
        names.append(name)
    return names
