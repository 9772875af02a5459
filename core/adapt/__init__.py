"""adapt: parameter-efficient adaptation of pretrained transformers, driven by plugins.

This module is the public API that plugins import: `hookimpl` to mark hook implementations, the types
they receive or return, the errors they may raise and the atomic-write helpers.
"""

from __future__ import annotations

import time

IMPORTED_AT = time.perf_counter()  # the start of a command, for summary.json's seconds to the first step

import pluggy  # noqa: E402

hookimpl = pluggy.HookimplMarker("adapt")

from adapt.data import from_pretrained_cached, load_file, require_columns  # noqa: E402
from adapt.errors import AdaptError, DataError, PluginError, RecipeError  # noqa: E402
from adapt.heads import (  # noqa: E402
    TextInputs,
    encode_splits,
    encode_texts,
    first_split,
    load_head_state,
    row_values,
    save_head_state,
    tokenize_texts,
)
from adapt.inference import example_logits, forward_batches  # noqa: E402
from adapt.interrupts import Interrupted  # noqa: E402
from adapt.io import atomic_dir, atomic_file, atomic_write_json, atomic_write_text, json_text  # noqa: E402
from adapt.mlm import has_mlm_head, mask_tokens, mlm_loss, pretrained_mlm_head  # noqa: E402
from adapt.modeling import (  # noqa: E402
    count_parameters,
    decay_groups,
    find_blocks,
    fresh_modules,
    head_module_names,
    label_config,
    load_task_model,
    model_config,
    on_last_block_output,
    preview_head_modules,
    task_head_modules,
)
from adapt.types import Kind, Metrics, NoOptions, PluginInfo, Run, Table  # noqa: E402
from adapt.weights import load_model_folder, load_tensors_into, save_model_folder, save_tensors  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AdaptError",
    "DataError",
    "Interrupted",
    "Kind",
    "Metrics",
    "NoOptions",
    "PluginError",
    "PluginInfo",
    "RecipeError",
    "Run",
    "Table",
    "TextInputs",
    "atomic_dir",
    "atomic_file",
    "atomic_write_json",
    "atomic_write_text",
    "count_parameters",
    "decay_groups",
    "encode_splits",
    "encode_texts",
    "example_logits",
    "find_blocks",
    "first_split",
    "forward_batches",
    "fresh_modules",
    "from_pretrained_cached",
    "has_mlm_head",
    "head_module_names",
    "hookimpl",
    "json_text",
    "label_config",
    "load_file",
    "load_head_state",
    "load_model_folder",
    "load_task_model",
    "load_tensors_into",
    "mask_tokens",
    "mlm_loss",
    "model_config",
    "on_last_block_output",
    "pretrained_mlm_head",
    "preview_head_modules",
    "require_columns",
    "row_values",
    "save_head_state",
    "save_model_folder",
    "save_tensors",
    "task_head_modules",
    "tokenize_texts",
]
