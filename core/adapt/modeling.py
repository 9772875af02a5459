"""Small model helpers that heads and methods share."""

from __future__ import annotations

import torch


def head_module_names(model: torch.nn.Module) -> list[str]:
    """Top-level modules with parameters outside the pretrained backbone (`base_model_prefix`):
    the task head a `*For...` model adds, e.g. ["classifier"] for BERT, ["score"] for GPT-2."""
    backbone = getattr(model, "base_model_prefix", None)
    return [
        name for name, child in model.named_children() if name != backbone and any(True for _ in child.parameters())
    ]


def find_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The stack of transformer blocks: the ModuleList of same-class modules holding the most parameters
    (`bert.encoder.layer`, GPT-2's `transformer.h`, LLaMA's `model.layers`...). Raises ValueError naming
    the model class when there is none."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1:
                size = sum(p.numel() for p in module.parameters())
                if size > best_size:
                    best, best_size = (name, module), size
    if best is None:
        raise ValueError(f"cannot find a stack of transformer blocks in {type(model).__name__}")
    return best
