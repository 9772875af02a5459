"""Head-only training (a linear probe): the pretrained backbone is frozen, only the task head trains.

Because nothing upstream of the head trains, the backbone's outputs for an example never change: by
default they are computed once (on the first epoch, and on the first evaluation) and reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from adapt import AdaptError, PluginInfo, Run, Table, hookimpl, load_tensors_into, save_tensors
from adapt_head_only.cache import FeatureCache

ARTIFACT = Path("head") / "head.safetensors"


class HeadOnlyTable(Table):
    cache_features: bool = True
    """Reuse backbone outputs across epochs; only possible while nothing upstream of the head trains."""
    cache_limit_mib: float = Field(default=4096, gt=0)
    """Stop caching (and fall back to running the backbone) beyond this many cached MiB."""


class HeadOnly:
    """One instance per run: it owns the feature cache."""

    def __init__(self) -> None:
        self.cache: FeatureCache | None = None
        self.shard_steps: list[int] = []  # checkpoints at which cache shards were written
        self.resumed: dict[str, Any] | None = None

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="method",
            table=HeadOnlyTable,
            summary="linear probe: only the task head trains; backbone features computed once",
            after=("int8",),
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

    @hookimpl
    def adapt_on_train_start(self, run: Run) -> None:
        table = run.table(HeadOnlyTable)
        model = run.unwrapped_model
        backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
        heads = run.head_prefixes
        upstream_trains = any(p.requires_grad for n, p in model.named_parameters() if not n.startswith(heads))
        if table.cache_features and backbone is not None and not upstream_trains:
            self.cache = FeatureCache(backbone, limit_bytes=int(table.cache_limit_mib * 2**20))
            self.cache.install()
            if self.resumed is not None:
                self._load_shards(run, self.resumed)

    # The cache is kept in shards beside the checkpoints, one per checkpoint and process holding the entries
    # added since the previous one: features recomputed in other batches could differ in their last bits, and
    # a resumed run must serve exactly what the interrupted one would have.
    def _shard(self, run: Run, step: int) -> Path:
        return run.checkpoints_dir / "head-only" / f"features-p{run.accelerator.process_index}-step{step}.safetensors"

    @hookimpl
    def adapt_checkpoint_state(self, run: Run) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        save_tensors(self.cache.export_new(), self._shard(run, run.step))
        if run.step not in self.shard_steps:
            self.shard_steps.append(run.step)
        return {"shard_steps": self.shard_steps, **self.cache.describe()}

    @hookimpl
    def adapt_load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.resumed = state  # the cache is built in adapt_on_train_start

    def _load_shards(self, run: Run, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        self.shard_steps = list(state["shard_steps"])
        for step in self.shard_steps:
            self.cache.import_entries(load_file(str(self._shard(run, step))))
        self.cache.restore(state)

    def _uninstall(self) -> None:
        if self.cache is not None:
            self.cache.uninstall()
            self.cache = None

    @hookimpl
    def adapt_summary(self, run: Run) -> dict:
        if self.cache is None:
            return {"head-only": {"feature_cache": False}}
        return {"head-only": {"feature_cache": True, **self.cache.stats()}}

    @hookimpl
    def adapt_on_train_end(self) -> None:
        self._uninstall()

    @hookimpl
    def adapt_on_train_error(self) -> None:
        self._uninstall()

    @hookimpl
    def adapt_save_artifacts(self, run: Run, directory: Path) -> None:
        heads = run.head_prefixes
        state = {k: v for k, v in run.unwrapped_model.state_dict().items() if k.startswith(heads)}
        save_tensors(state, directory / ARTIFACT)

    @hookimpl
    def adapt_load_artifacts(self, run: Run, directory: Path) -> None:
        self.adapt_transform_model(run)
        load_tensors_into(run.model, directory / ARTIFACT)
