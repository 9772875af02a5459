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
    "Interrupted": "adapt.interrupts",
    "Kind": "adapt.types",
    "Metrics": "adapt.types",
    "NoOptions": "adapt.types",
    "PluginInfo": "adapt.types",
    "Run": "adapt.context",
    "Table": "adapt.types",
    "Head": "adapt.heads",
    "TextInputs": "adapt.heads",
    "encode_splits": "adapt.heads",
    "first_split": "adapt.heads",
    "row_values": "adapt.heads",
    "tokenize_texts": "adapt.heads",
    "from_pretrained_cached": "adapt.data",
    "load_file": "adapt.data",
    "require_columns": "adapt.data",
    "atomic_dir": "adapt.io",
    "atomic_file": "adapt.io",
    "atomic_write_json": "adapt.io",
    "atomic_write_text": "adapt.io",
    "json_text": "adapt.io",
    "has_mlm_head": "adapt.mlm",
    "mask_tokens": "adapt.mlm",
    "mlm_loss": "adapt.mlm",
    "pretrained_mlm_head": "adapt.mlm",
    "count_parameters": "adapt.modeling",
    "decay_groups": "adapt.modeling",
    "find_blocks": "adapt.modeling",
    "fresh_modules": "adapt.modeling",
    "model_config": "adapt.modeling",
    "on_last_block_output": "adapt.modeling",
    "FrozenPrefixCaching": "adapt.prefix_cache",
    "PrefixCache": "adapt.prefix_cache",
    "keep_in_eval": "adapt.prefix_cache",
    "serve_frozen_prefix": "adapt.prefix_cache",
    "load_model_folder": "adapt.weights",
    "load_tensors_into": "adapt.weights",
    "save_model_folder": "adapt.weights",
    "save_tensors": "adapt.weights",
}

# Names that left the public API, importable for one release with a DeprecationWarning naming what replaces them.
_HEAD = "subclass adapt.Head, which does this (docs/plugins.md, 'A head')"
_DEPRECATED = {
    "encode_texts": ("adapt.heads", _HEAD),
    "example_logits": ("adapt.inference", _HEAD),
    "forward_batches": ("adapt.inference", _HEAD),
    "load_head_state": ("adapt.heads", _HEAD),
    "save_head_state": ("adapt.heads", _HEAD),
    "label_config": ("adapt.modeling", _HEAD),
    "load_task_model": ("adapt.modeling", _HEAD),
    "task_head_modules": ("adapt.modeling", _HEAD),
    "preview_head_modules": ("adapt.modeling", "adapt.Head names its modules; run.head_parameters() lists them"),
    "head_module_names": ("adapt.modeling", "adapt.Head names its modules; run.head_parameters() lists them"),
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
