"""Freeze most, train the top layers: the classic transfer-learning recipe.

The top `train_last` transformer blocks and everything after them (final norm, pooler, task head) train;
the embeddings and the blocks below are frozen and run in evaluation mode (no dropout), so their output
for an example never changes. By default it is computed once and served from a memory-mapped cache on
later epochs and evaluations (`adapt.serve_frozen_prefix`). Composed with LoRA (`[methods.lora]` before it), the
blocks below are frozen LoRA included, and the top blocks train as LoRA made them: LoRA on the top layers.
`train_last = 0` is a linear probe on the last block's output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from adapt import (
    AdaptError,
    Capability,
    FrozenPrefixCaching,
    PluginInfo,
    Run,
    Table,
    find_blocks,
    hookimpl,
    keep_in_eval,
    load_tensors_into,
    save_tensors,
)

ARTIFACT = Path("top-layers") / "trained.safetensors"


class TopLayersTable(Table):
    train_last: int = Field(default=2, ge=0, description="transformer blocks that train, counted from the top")
    cache: bool = True
    """Serve the frozen prefix's output from a cache after an example's first pass (needs nothing below the first
    trained block to train, which this method ensures unless another method trains there)."""
    cache_dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    """Storage type of cached states: float32 is exact (bit-identical outputs); float16 halves the file for a
    rounding of ~5e-4 relative; bfloat16 keeps float32's range. States out of the type's range are not cached (their
    examples run the prefix each time)."""


class TopLayers(FrozenPrefixCaching):
    """One instance per run: it owns the prefix cache (the mix-in carries it through checkpoints and errors)."""

    cache_owner = "top-layers"

    def __init__(self) -> None:
        self.frozen_blocks = 0

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="method",
            table=TopLayersTable,
            summary="freeze most, train the top k blocks and the head; the frozen prefix's output is cached",
            provides=(Capability.TRAINS_PRETRAINED_WEIGHTS,),
            runs_after=(Capability.QUANTISES_BASE, Capability.ADDS_MODULES),
            conflicts={
                "full": "full fine-tuning trains every layer, top-layers freezes all but the top ones",
                "head-only": "head-only is top-layers' train_last = 0; use one of them",
                "gradual-unfreezing": "gradual unfreezing unfreezes the lower layers that top-layers keeps frozen",
            },
        )

    def _split(self, run: Run, model):
        """(the block stack's name and list, index of the first trained block, frozen parameter names)."""
        table = run.table(TopLayersTable)
        try:
            name, blocks = find_blocks(model)
        except ValueError as exc:
            raise AdaptError(f"methods.top-layers: {exc}") from None
        if table.train_last > len(blocks):
            raise AdaptError(
                f"methods.top-layers.train_last: {table.train_last}, but {run.recipe.model.name} has "
                f"{len(blocks)} blocks; use 0 to {len(blocks)}"
            )
        first = len(blocks) - table.train_last
        first_trained = f"{name}.{first}."
        frozen, inside = [], False
        for param_name, _ in model.named_parameters():  # in module order: all before the boundary is frozen
            in_blocks = param_name.startswith(f"{name}.")
            if param_name.startswith(first_trained) or (first == len(blocks) and inside and not in_blocks):
                break
            inside = inside or in_blocks
            frozen.append(param_name)
        return name, blocks, first, set(frozen)

    @hookimpl
    def adapt_transform_model(self, run: Run) -> None:
        name, blocks, first, frozen = self._split(run, run.model)
        for param_name, param in run.model.named_parameters():
            if param_name in frozen:
                param.requires_grad_(False)
        # no dropout below the boundary: the frozen prefix becomes a deterministic function of the input
        for module in _frozen_modules(run.model, name, blocks, first, frozen):
            keep_in_eval(module)
        self.frozen_blocks = first
        if not any(p.requires_grad for p in run.model.parameters()):
            raise AdaptError("methods.top-layers: nothing left to train (the model has no head and train_last = 0)")

    @hookimpl
    def adapt_on_train_start(self, run: Run) -> None:
        table = run.table(TopLayersTable)
        if table.cache:
            self.start_prefix_cache(run, first=self.frozen_blocks, dtype=table.cache_dtype)

    @hookimpl
    def adapt_summary(self, run: Run) -> dict:
        table = run.table(TopLayersTable)
        found = {"train_last": table.train_last, "frozen_blocks": self.frozen_blocks}
        found["cache"] = self.prefix_cache.stats() if self.prefix_cache is not None else False
        return {"top-layers": found}

    @hookimpl
    def adapt_save_artifacts(self, run: Run, directory: Path) -> None:
        """The trained weights, unless another method (LoRA) saves them in its own format."""
        model = run.unwrapped_model
        if _wrapped_by_peft(model):
            return
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        save_tensors({k: v for k, v in model.state_dict().items() if k in trained}, directory / ARTIFACT)

    @hookimpl
    def adapt_load_artifacts(self, run: Run, directory: Path) -> None:
        self.adapt_transform_model(run)
        if (directory / ARTIFACT).is_file():
            load_tensors_into(run.model, directory / ARTIFACT)


def _frozen_modules(model, blocks_name: str, blocks, first: int, frozen: set[str]) -> list:
    """The modules to keep in evaluation mode: the frozen blocks, and the largest modules all of whose
    parameters are frozen that do not contain the block stack (the embeddings)."""
    chosen = list(blocks)[:first]
    taken: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f"{t}.") for t in taken) or blocks_name.startswith(f"{name}."):
            continue
        if name == blocks_name or name.startswith(f"{blocks_name}."):
            continue
        params = [f"{name}.{n}" for n, _ in module.named_parameters()]
        if params and all(p in frozen for p in params):
            chosen.append(module)
            taken.append(name)
    return chosen


def _wrapped_by_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
