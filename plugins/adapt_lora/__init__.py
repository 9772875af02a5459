"""LoRA through PEFT: low-rank updates on chosen linear layers; the head stays fully trainable.

The artifact is PEFT's own adapter folder, so `PeftModel.from_pretrained(base_with_head, run_dir/"adapter")`
restores the trained model (the head is saved as one of PEFT's `modules_to_save`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from adapt import Capability, PluginInfo, RecipeError, Run, Table, atomic_dir, decay_groups, hookimpl

ADAPTER_DIR = "adapter"


class LoraTable(Table):
    r: int = Field(default=8, ge=1, description="rank of the update matrices")
    alpha: float = Field(default=16, gt=0, description="scaling numerator: updates are scaled by alpha / r")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the LoRA path's input (0 keeps the fused layer)."""
    target_modules: list[str] | Literal["all-linear"] = ["query", "value"]
    """Module names (suffixes) to adapt, or "all-linear" for every linear layer but the output one."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases train: "none", "all" (every bias of the model) or "lora_only" (those of adapted layers)."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead of alpha / r."""
    use_dora: bool = False
    """DoRA (Liu et al. 2024): each adapted weight split into a trained magnitude per output and a LoRA-updated
    direction; PEFT's forward (the fused layer steps aside), a few more parameters, slower steps."""
    modules_to_save: list[str] = []
    """Extra modules to train fully and save, beyond the head's own."""
    lr_ratio: float | None = Field(default=None, gt=0)
    """LoRA+ (Hayou et al. 2024): the B matrices learn this many times faster than the rest (e.g. 16)."""
    fused: bool = True
    """One autograd function per LoRA layer (the scaling inside the matmul) instead of PEFT's chain of operations:
    the same result up to rounding, faster steps. Layers with dropout, DoRA or a quantised base keep PEFT's forward, as
    does every layer under train.compile (the compiler fuses PEFT's forward itself)."""


@hookimpl
def adapt_plugin_info() -> PluginInfo:
    return PluginInfo(
        kind="method",
        table=LoraTable,
        summary="LoRA low-rank adapters (PEFT), DoRA and rsLoRA",
        provides=(Capability.ADDS_MODULES, Capability.KEEPS_BASE_FROZEN),
        runs_after=(Capability.QUANTISES_BASE,),
    )


def lora_config(run: Run):
    from peft import LoraConfig

    table = run.table(LoraTable)
    return LoraConfig(
        r=table.r,
        lora_alpha=table.alpha,
        lora_dropout=table.dropout,
        target_modules=table.target_modules,
        bias=table.bias,
        use_rslora=table.use_rslora,
        use_dora=table.use_dora,
        modules_to_save=[*run.head_modules, *table.modules_to_save] or None,
        task_type=run.task_type,
        # GPT-2's Conv1D layers store weights transposed; PEFT would otherwise warn and switch per layer
        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in run.model.modules()),
    )


@hookimpl
def adapt_transform_model(run: Run) -> None:
    from peft import get_peft_model

    config = lora_config(run)
    try:
        run.model = get_peft_model(run.model, config)
    except ValueError as exc:  # peft's NoMatchingPeftModuleError, or "not found in the base model" in older PEFT
        if type(exc).__name__ != "NoMatchingPeftModuleError" and "not found in the base model" not in str(exc):
            raise
        raise RecipeError(_unknown_targets(run.model, run.table(LoraTable).target_modules)) from None
    _fuse(run)


def _unknown_targets(model, targets) -> str:
    """The recipe problem of target modules the model does not have, with the names its linear layers go by."""
    import torch

    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    return (
        f"methods.lora.target_modules: {targets!r} names no module of this model; its linear layers are named "
        f"{', '.join(names)} (or use \"all-linear\")"
    )


def _fuse(run: Run) -> None:
    # under train.compile the compiler fuses PEFT's forward itself, and a per-layer forward would recompile per block
    if run.table(LoraTable).fused and not run.recipe.train.compile:
        from adapt_lora.fused import fuse_lora_layers  # imports torch: not at plugin discovery

        fuse_lora_layers(run.model)


@hookimpl
def adapt_param_groups(run: Run) -> list[dict[str, Any]] | None:
    """With `lr_ratio` (LoRA+), the B matrices in a group of their own at `lr_ratio` times the learning rate;
    the others as the core groups them (matrices decay, vectors do not)."""
    table = run.table(LoraTable)
    if table.lr_ratio is None:
        return None
    trained = [(name, param) for name, param in run.model.named_parameters() if param.requires_grad]
    b_matrices = [param for name, param in trained if ".lora_B." in name]
    rest = decay_groups(param for name, param in trained if ".lora_B." not in name)
    lr = run.recipe.train.learning_rate * table.lr_ratio
    return [{"name": "lora_B", "params": b_matrices, "lr": lr}, *rest] if b_matrices else rest


@hookimpl
def adapt_save_artifacts(run: Run, directory: Path) -> None:
    with atomic_dir(directory / ADAPTER_DIR) as tmp:
        run.unwrapped_model.save_pretrained(tmp, save_embedding_layers=False)


@hookimpl
def adapt_load_artifacts(run: Run, directory: Path) -> None:
    from peft import PeftModel

    run.model = PeftModel.from_pretrained(run.model, directory / ADAPTER_DIR)
    _fuse(run)


@hookimpl
def adapt_export_model(run: Run, merge: bool) -> None:
    """Unmerged, the export is PEFT's adapter folder (`AutoPeftModelFor...` loads it); merged, a plain
    transformers model with each low-rank update added into its base weight."""
    if merge:
        run.model = merge_lora(run.unwrapped_model)


def merge_lora(model):
    """`merge_and_unload`, except that a base layer a quantisation method already dequantised to a plain
    `nn.Linear` gets the update added directly (PEFT's quantised-layer merge would quantise it again)."""
    import torch
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        if type(base) is torch.nn.Linear:
            with torch.no_grad():
                for adapter in module.active_adapters:
                    base.weight += module.get_delta_weight(adapter).to(base.weight.dtype)
        else:
            module.merge()
    return model.unload()
