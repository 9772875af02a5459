"""Head-only training (a linear probe): the pretrained backbone is frozen, only the task head trains.

The frozen backbone runs in evaluation mode (no dropout), so the output of its block stack for an example never
changes: by default it is computed once (on the first epoch, and on the first evaluation) and served from a
memory-mapped cache afterwards, the k = 0 case of top-layers' frozen-prefix cache (`adapt.serve_frozen_prefix`).
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

ARTIFACT = Path("head") / "head.safetensors"


class HeadOnlyTable(Table):
    cache_features: bool = True
    """Serve the backbone's block outputs from a cache after an example's first pass (only while nothing upstream of
    the head trains)."""
    cache_dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    """Storage type of cached states: float32 is exact (bit-identical outputs); float16 halves the file for a
    rounding of ~5e-4 relative; bfloat16 keeps float32's range."""
    cache_limit_mib: float = Field(default=4096, gt=0)
    """The cache file's largest size: examples beyond it run the backbone each time."""


class HeadOnly(FrozenPrefixCaching):
    """One instance per run: it owns the feature cache (the mix-in carries it through checkpoints and errors)."""

    cache_owner = "head-only"

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="method",
            table=HeadOnlyTable,
            summary="linear probe: only the task head trains; backbone features computed once",
            provides=(Capability.KEEPS_BASE_FROZEN,),
            runs_after=(Capability.QUANTISES_BASE,),
            conflicts={
                "lora": "LoRA trains inside the backbone, which head-only keeps frozen",
                "adapters": "adapters train inside the backbone, which head-only keeps frozen",
                "gradual-unfreezing": "gradual unfreezing starts from the head and then trains the backbone",
            },
        )

    @hookimpl
    def adapt_transform_model(self, run: Run) -> None:
        heads = run.head_prefixes
        if not heads:
            raise AdaptError(
                f"methods.head-only: head '{run.recipe.head}' adds no fresh modules to this model (its output layer "
                "is pretrained), so a linear probe has nothing to train; use lora or adapters"
            )
        for name, param in run.model.named_parameters():
            param.requires_grad_(name.startswith(heads))
        # a frozen feature extractor: no dropout, so an example's features are the same on every pass
        for name, module in run.model.named_children():
            params = list(module.parameters())  # modules without any (the head's own dropout) keep training
            if params and not name.startswith(heads) and not any(p.requires_grad for p in params):
                keep_in_eval(module)

    @hookimpl
    def adapt_on_train_start(self, run: Run) -> None:
        table = run.table(HeadOnlyTable)
        if not table.cache_features:
            return
        try:
            blocks = len(find_blocks(run.unwrapped_model)[1])
        except ValueError:
            return  # no block stack to cache the output of: the backbone runs every time
        limit = int(table.cache_limit_mib * 2**20)
        self.start_prefix_cache(run, first=blocks, dtype=table.cache_dtype, max_bytes=limit)

    @hookimpl
    def adapt_summary(self, run: Run) -> dict:
        if self.prefix_cache is None:
            return {"head-only": {"feature_cache": False}}
        return {"head-only": {"feature_cache": True, **self.prefix_cache.stats()}}

    @hookimpl
    def adapt_save_artifacts(self, run: Run, directory: Path) -> None:
        heads = run.head_prefixes
        state = {k: v for k, v in run.unwrapped_model.state_dict().items() if k.startswith(heads)}
        save_tensors(state, directory / ARTIFACT)

    @hookimpl
    def adapt_load_artifacts(self, run: Run, directory: Path) -> None:
        self.adapt_transform_model(run)
        load_tensors_into(run.model, directory / ARTIFACT)
