"""adapt: parameter-efficient adaptation of pretrained transformers, driven by plugins.

This module is the public API that plugins import: `hookimpl` to mark hook implementations, the types they receive
or return, the errors they may raise and the helpers below. Names load on first use (PEP 562), so `import adapt`,
`adapt --help` and `adapt plugins` do not import torch.
"""

from __future__ import annotations

import importlib
import time
import warnings
from typing import Any

from adapt.hookspecs import HOOK_API, hookimpl  # noqa: F401 - public

IMPORTED_AT = time.perf_counter()  # the start of a command, for summary.json's seconds to the first step

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "AdaptError": "adapt.errors",
    "DataError": "adapt.errors",
    "PluginError": "adapt.errors",
    "RecipeError": "adapt.errors",
    "Interrupted": "adapt.run.interrupts",
    "Capability": "adapt.types",
    "Kind": "adapt.types",
    "Metrics": "adapt.types",
    "NoOptions": "adapt.types",
    "PluginInfo": "adapt.types",
    "Run": "adapt.run.context",
    "Table": "adapt.types",
    "FirstTokenInputs": "adapt.model.heads",
    "Head": "adapt.model.heads",
    "TextInputs": "adapt.model.heads",
    "WINDOW_OF": "adapt.model.heads",
    "encode_splits": "adapt.model.heads",
    "first_split": "adapt.model.heads",
    "row_values": "adapt.model.heads",
    "tokenize_texts": "adapt.model.heads",
    "from_pretrained_cached": "adapt.loading.hub",
    "load_file": "adapt.loading.files",
    "require_columns": "adapt.loading.files",
    "atomic_dir": "adapt.io",
    "atomic_file": "adapt.io",
    "atomic_write_json": "adapt.io",
    "atomic_write_text": "adapt.io",
    "json_text": "adapt.io",
    "EXAMPLE_DATA_PREFIX": "adapt.model.inference",
    "model_inputs": "adapt.model.inference",
    "has_mlm_head": "adapt.model.mlm",
    "mask_tokens": "adapt.model.mlm",
    "mlm_loss": "adapt.model.mlm",
    "pretrained_mlm_head": "adapt.model.mlm",
    "count_parameters": "adapt.model.modeling",
    "decay_groups": "adapt.model.modeling",
    "find_blocks": "adapt.model.modeling",
    "fresh_modules": "adapt.model.modeling",
    "model_config": "adapt.model.modeling",
    "on_last_block_output": "adapt.model.modeling",
    "FrozenPrefixCaching": "adapt.speed.prefix_cache",
    "PrefixCache": "adapt.speed.prefix_cache",
    "keep_in_eval": "adapt.speed.prefix_cache",
    "serve_frozen_prefix": "adapt.speed.prefix_cache",
    "trim_top_block": "adapt.speed.trim",
    "load_model_folder": "adapt.model.weights",
    "load_tensors_into": "adapt.model.weights",
    "save_model_folder": "adapt.model.weights",
    "save_tensors": "adapt.model.weights",
}

# Names that left the public API, importable for one release with a DeprecationWarning naming what replaces them.
_HEAD = "subclass adapt.Head, which does this (docs/plugins.md, 'A head')"
_DEPRECATED = {
    "encode_texts": ("adapt.model.heads", _HEAD),
    "example_logits": ("adapt.model.inference", _HEAD),
    "forward_batches": ("adapt.model.inference", _HEAD),
    "load_head_state": ("adapt.model.heads", _HEAD),
    "save_head_state": ("adapt.model.heads", _HEAD),
    "label_config": ("adapt.model.modeling", _HEAD),
    "load_task_model": ("adapt.model.modeling", _HEAD),
    "task_head_modules": ("adapt.model.modeling", _HEAD),
    "preview_head_modules": ("adapt.model.modeling", "adapt.Head names its modules; run.head_parameters() lists them"),
    "head_module_names": ("adapt.model.modeling", "adapt.Head names its modules; run.head_parameters() lists them"),
}

__all__ = sorted(["HOOK_API", "hookimpl", *_EXPORTS])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None and name in _DEPRECATED:
        module, instead = _DEPRECATED[name]
        warnings.warn(f"adapt.{name} is no longer public API: {instead}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), name)
    if module is None:
        raise AttributeError(f"module 'adapt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
