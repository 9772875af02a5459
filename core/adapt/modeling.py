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
