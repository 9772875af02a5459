"""Small model helpers that heads and methods share."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from adapt.errors import AdaptError

if TYPE_CHECKING:
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
    import torch

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


def on_last_block_output(
    model: torch.nn.Module, callback: Callable[[torch.nn.Module, torch.Tensor], None]
) -> torch.utils.hooks.RemovableHandle:
    """Call `callback(block, hidden_states)` on every forward pass of the model's last transformer block (its
    output hidden states, whether the block returns them alone or first in a tuple). Returns the hook's handle
    (`.remove()` it when done)."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        callback(module, output[0] if isinstance(output, tuple) else output)

    return find_blocks(model)[1][-1].register_forward_hook(hook)


def parameter_count(param: torch.Tensor) -> int:
    """Elements a parameter stands for: a packed 4-bit tensor holds two per byte, its quant_state knows."""
    import torch

    state = getattr(param, "quant_state", None)
    shape = getattr(state, "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else param.numel()


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for param in model.parameters():
        n = parameter_count(param)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def preview_head_modules(auto_class, config) -> list[str]:
    """`head_module_names` of the model `auto_class` builds from `config`, built on the meta device:
    no memory, no weights, so a quantisation plugin can learn what to leave unquantised before loading."""
    import torch

    with torch.device("meta"):
        model = auto_class.from_config(config)
    return head_module_names(model)


def label_config(labels: list[str]) -> dict:
    """`from_pretrained` keyword arguments naming a head's classes."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {n: i for i, n in enumerate(labels)},
    }


def model_config(run, **config_kwargs):
    """The `[model]`'s transformers config (cache first), with `config_kwargs` set on it."""
    from transformers import AutoConfig

    from adapt.loading.hub import from_pretrained_cached

    model = run.recipe.model
    return from_pretrained_cached(
        AutoConfig.from_pretrained,
        model.name,
        key="model.name",
        revision=model.revision,
        trust_remote_code=model.trust_remote_code,
        **config_kwargs,
    )


def task_head_modules(run, auto_class, **config_kwargs) -> list[str]:
    """A head's `adapt_head_modules` for a transformers Auto class: its config built on the meta device."""
    return preview_head_modules(auto_class, model_config(run, **config_kwargs))


def load_task_model(run, auto_class, load_kwargs: dict, task_type: str, **config_kwargs) -> torch.nn.Module:
    """A head's `adapt_load_model` for a transformers Auto class: load cache first, then record the
    head's modules and PEFT task type on the run."""
    from adapt.loading.hub import from_pretrained_cached

    model = from_pretrained_cached(
        auto_class.from_pretrained, run.recipe.model.name, key="model.name", **config_kwargs, **load_kwargs
    )
    if getattr(model.config, "pad_token_id", 0) is None and run.tokenizer.pad_token_id is not None:
        model.config.pad_token_id = run.tokenizer.pad_token_id  # decoder backbones pool on the last real token
    run.head_modules = head_module_names(model)
    run.task_type = task_type
    return model


def fresh_modules(model: torch.nn.Module, missing_keys) -> list[str]:
    """The largest modules all of whose parameters the checkpoint lacked (they start random), e.g.
    ["cls.predictions.transform"] for a BERT encoder loaded as a causal LM, [] for GPT-2. A module sharing
    a parameter with a loaded one (a decoder tied to the embeddings) is not fresh."""
    missing = set(missing_keys)
    fresh: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f"{f}.") for f in fresh):
            continue
        params = [f"{name}.{p}" for p, _ in module.named_parameters(remove_duplicate=False)]
        ids = {id(p) for _, p in module.named_parameters()}
        shared = any(
            id(p) in ids and not n.startswith(f"{name}.") for n, p in model.named_parameters(remove_duplicate=False)
        )
        if params and not shared and all(p in missing for p in params):
            fresh.append(name)
    return fresh


def decay_groups(params, prefix: str = "", **options) -> list[dict]:
    """`torch.optim` parameter groups for `params`: matrices with weight decay ("{prefix}decay"), vectors
    (biases, norms) without ("{prefix}no_decay"); `options` (an "lr") go into both; empty groups are left out."""
    params = list(params)
    groups = [
        {"name": f"{prefix}decay", "params": [p for p in params if p.ndim >= 2], **options},
        {"name": f"{prefix}no_decay", "params": [p for p in params if p.ndim < 2], **options, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing on the transformers model inside `model` (under PEFT's wrapper
    too). Non-reentrant, because the reentrant form needs the blocks' inputs to require grad, which they do
    not on a frozen base (LoRA, adapters); it also keeps dropout's random numbers for the recomputation."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise AdaptError(
            f"train.gradient_checkpointing: {type(target).__name__} does not support activation checkpointing; "
            "set it to false"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers before activation_checkpointing_enable
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
