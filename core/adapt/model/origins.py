"""Where each parameter of a run's model came from, however methods have wrapped or renamed it since.

The core records the head's model right after `adapt_load_model`, before any method runs. A parameter is then
found again by identity (LoRA, adapters and freezing keep the loaded Parameter objects, under new names such as
`base_model.model.bert...query.base_layer.weight`), else by its name with PEFT's wrapper segments removed (the
trainable copy PEFT makes of a head in `modules_to_save`). Anything else a method added (LoRA's A and B, a
bottleneck adapter).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Origin = Literal["head", "pretrained", "method"]

_PEFT_ROOT = ("base_model", "model")  # PeftModel -> LoraModel -> the loaded model
_PEFT_SKIPPED = {"base_layer", "original_module"}  # a wrapped layer keeps the loaded module under these names


def loaded_name(name: str) -> str:
    """`name` with PEFT's wrapper segments removed: the name the parameter had, or would have had, when loaded."""
    parts = name.split(".")
    if tuple(parts[:2]) == _PEFT_ROOT:
        parts = parts[2:]
    kept: list[str] = []
    skip_next = False
    for part in parts:
        if skip_next:  # `modules_to_save.ADAPTER`: the adapter's trainable copy of a loaded module
            skip_next = False
        elif part == "modules_to_save":
            skip_next = True
        elif part not in _PEFT_SKIPPED:
            kept.append(part)
    return ".".join(kept)


class ParameterOrigins:
    """The loaded model's parameters, by identity (weakly: a replaced tensor is freed) and by name."""

    def __init__(self, model: torch.nn.Module, head_prefixes: tuple[str, ...]):
        self.head_prefixes = head_prefixes
        self._by_id: dict[int, tuple[weakref.ref, str]] = {}
        self._names: set[str] = set()
        for name, param in model.named_parameters(remove_duplicate=False):
            self._by_id[id(param)] = (weakref.ref(param), name)
            self._names.add(name)

    def original_name(self, name: str, param: torch.nn.Parameter) -> str | None:
        """The name `param` (now called `name`) had in the loaded model, or None when a method added it."""
        found = self._by_id.get(id(param))
        if found is not None and found[0]() is param:
            return found[1]
        loaded = loaded_name(name)
        return loaded if loaded in self._names else None

    def origin(self, name: str, param: torch.nn.Parameter) -> Origin:
        original = self.original_name(name, param)
        if original is None:
            return "method"
        return "head" if self.head_prefixes and original.startswith(self.head_prefixes) else "pretrained"
