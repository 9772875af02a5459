"""LoRA through PEFT: low-rank updates on chosen linear layers; the head stays fully trainable.

The artifact is PEFT's own adapter folder, so `PeftModel.from_pretrained(base_with_head, run_dir/"adapter")`
restores the trained model (the head is saved as one of PEFT's `modules_to_save`). Initialisations that move part
of each base weight into the adapter (PiSSA, OLoRA, CorDA) are saved as the equivalent plain LoRA adapter of twice
the rank, which applies to the unchanged base (`adapt_lora.initialise`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from adapt import Capability, PluginInfo, RecipeError, Run, Table, atomic_dir, decay_groups, hookimpl

ADAPTER_DIR = "adapter"
#: Initialisations that rewrite each adapted base weight (W - the part the adapter starts with).
MOVES_BASE_WEIGHTS = ("pissa", "olora", "corda")
#: Initialisations computed from training batches, and how many examples they read unless told.
FROM_DATA = ("eva", "corda")
INIT_EXAMPLES = 256


class LoraTable(Table):
    r: int = Field(default=8, ge=1, description="rank of the update matrices")
    alpha: float = Field(default=16, gt=0, description="scaling numerator: updates are scaled by alpha / r")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the LoRA path's input (0 keeps the fused layer)."""
    target_modules: list[str] | Literal["all-linear"] = ["query", "value"]
    """Module names (suffixes) to adapt, or "all-linear" for every linear layer but the output one."""
    exclude_modules: list[str] = []
    """Module names (suffixes) never to adapt, even where target_modules matches them (e.g. "pooler.dense")."""
    target_parameters: list[str] = []
    """Parameters (not modules) to adapt by name suffix, e.g. a mixture-of-experts layer's stacked expert weights
    ("experts.gate_up_proj"); beside or instead of target_modules."""
    layers_to_transform: list[int] | int | None = None
    """Only these block indices (0 = the first block); None: every block."""
    layers_pattern: str | None = None
    """The name of the list of blocks that layers_to_transform counts in ("layer", "layers", "h"), where PEFT cannot
    tell by itself."""
    rank_pattern: dict[str, int] = {}
    """Another rank for the modules matching a name or regular expression, e.g. {"value" = 16}."""
    alpha_pattern: dict[str, float] = {}
    """Another alpha for the modules matching a name or regular expression."""
    init: Literal["default", "gaussian", "orthogonal", "pissa", "olora", "eva", "corda"] = "default"
    """How A and B start. "default": A Kaiming-uniform, B zero (the update starts at zero); "gaussian": A normal;
    "orthogonal": A and B orthogonal; "pissa": the top singular vectors of each weight (the rest stays in the base);
    "olora": a QR decomposition of each weight; "eva": A from the singular vectors of the layer inputs on training
    batches (ranks redistributed by eva_rho); "corda": the singular vectors of each weight times its input covariance
    on training batches. pissa, olora and corda move part of each base weight into the adapter, so the artifact is
    saved as a plain LoRA adapter of twice the rank that applies to the unchanged base."""
    pissa_niter: int | None = Field(default=None, ge=1)
    """init = "pissa" only: a randomised SVD with this many subspace iterations (fast PiSSA) instead of the full SVD."""
    eva_rho: float | None = Field(default=None, ge=1)
    """init = "eva" only (default 2): ranks are redistributed across layers up to r x eva_rho (1: each keeps r)."""
    eva_tau: float | None = Field(default=None, gt=0, le=1)
    """init = "eva" only (default 0.99): a component has converged once its cosine similarity between batches
    exceeds this."""
    corda_method: Literal["ipm", "kpm"] | None = None
    """init = "corda" only (default "ipm"): "ipm" (instruction-previewed: adapt the components the task's data uses
    most) or "kpm"
    (knowledge-preserved: keep those frozen, against forgetting)."""
    init_examples: int | None = Field(default=None, ge=1)
    """init = "eva" or "corda" (default 256): the training examples the initialisation reads (EVA in batches of
    train.batch_size, CorDA one at a time, as its covariance statistics expect)."""
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

    @model_validator(mode="after")
    def _options_fit_together(self) -> LoraTable:
        only = {"pissa_niter": "pissa", "eva_rho": "eva", "eva_tau": "eva", "corda_method": "corda"}
        for key, init in only.items():
            if getattr(self, key) is not None and self.init != init:
                raise ValueError(f"{key} applies to init = {init!r} only, not init = {self.init!r}")
        if self.init_examples is not None and self.init not in FROM_DATA:
            raise ValueError(f"init_examples applies to init = 'eva' or 'corda' only, not init = {self.init!r}")
        if self.layers_pattern is not None and self.layers_to_transform is None:
            raise ValueError("layers_pattern names where layers_to_transform counts: set layers_to_transform too")
        if self.use_dora and self.init in (*MOVES_BASE_WEIGHTS, "eva"):
            raise ValueError(f"use_dora and init = {self.init!r} do not combine (PEFT initialises one or the other)")
        if self.init in MOVES_BASE_WEIGHTS and self.use_rslora and (self.rank_pattern or self.alpha_pattern):
            raise ValueError(
                f"init = {self.init!r} with use_rslora and a rank or alpha pattern cannot be saved as a plain LoRA "
                "adapter (PEFT's conversion does not support the three together)"
            )
        return self


def lora_config(run: Run):
    from peft import LoraConfig

    table = run.table(LoraTable)
    init: bool | str = {"default": True}.get(table.init, table.init)
    if table.init == "pissa" and table.pissa_niter is not None:
        init = f"pissa_niter_{table.pissa_niter}"
    if run.planning:  # shapes only: no SVD or data pass on meta tensors
        init = True
    elif table.init in FROM_DATA and run.encoded is None:  # adapt check encodes no data: the shapes, as planned
        run.note(f"methods.lora.init = {table.init!r} reads the training data when a run starts; here LoRA's default")
        init = True
    extra: dict[str, Any] = {}
    if init == "eva":
        from peft import EvaConfig

        # the label mask only where labels are per token (a classifier's labels are per row)
        per_token = run.task_type in ("TOKEN_CLS", "CAUSAL_LM")
        extra["eva_config"] = EvaConfig(rho=table.eva_rho or 2.0, tau=table.eva_tau or 0.99, use_label_mask=per_token)
    if init == "corda":
        from peft.tuners.lora.config import CordaConfig

        extra["corda_config"] = CordaConfig(corda_method=table.corda_method or "ipm")
    return LoraConfig(
        r=table.r,
        lora_alpha=table.alpha,
        lora_dropout=table.dropout,
        target_modules=table.target_modules or None,
        exclude_modules=table.exclude_modules or None,
        target_parameters=table.target_parameters or None,
        layers_to_transform=table.layers_to_transform,
        layers_pattern=table.layers_pattern,
        rank_pattern=table.rank_pattern,
        alpha_pattern=table.alpha_pattern,
        init_lora_weights=init,
        bias=table.bias,
        use_rslora=table.use_rslora,
        use_dora=table.use_dora,
        modules_to_save=[*run.head_modules, *table.modules_to_save] or None,
        task_type=run.peft_task_type(),
        # GPT-2's Conv1D layers store weights transposed; PEFT would otherwise warn and switch per layer
        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in run.model.modules()),
        **extra,
    )


class Lora:
    """One instance per run: it keeps the adapter's starting values where the initialisation moved part of the base
    weights into it, to save the trained adapter as one that applies to the unchanged base."""

    def __init__(self) -> None:
        self.initial: dict[str, Any] | None = None

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="method",
            table=LoraTable,
            summary="LoRA low-rank adapters (PEFT): DoRA, rsLoRA, LoRA+, PiSSA/OLoRA/EVA/CorDA initialisations",
            provides=(Capability.ADDS_MODULES, Capability.KEEPS_BASE_FROZEN),
            runs_after=(Capability.QUANTISES_BASE,),
        )

    @hookimpl
    def adapt_transform_model(self, run: Run) -> None:
        from peft import get_peft_model

        from adapt_lora import initialise  # imports torch: not at plugin discovery

        table = run.table(LoraTable)
        if table.init in MOVES_BASE_WEIGHTS:
            initialise.refuse_quantised_base(run.model, table.init)
        config = lora_config(run)
        if config.init_lora_weights == "corda":
            initialise.corda_statistics(run, config, table.init_examples or INIT_EXAMPLES)
        try:
            run.model = get_peft_model(run.model, config)
        except ValueError as exc:  # peft's NoMatchingPeftModuleError, or "not found in the base model" in older PEFT
            if type(exc).__name__ == "NoMatchingPeftModuleError" or "not found in the base model" in str(exc):
                raise RecipeError(_unknown_targets(run.model, table.target_modules)) from None
            # PEFT checks the configuration against the model here: what it refuses, the recipe asked for
            raise RecipeError(f"methods.lora: PEFT cannot apply this configuration to the model: {exc}") from None
        if config.init_lora_weights == "eva":
            initialise.eva(run, table.init_examples or INIT_EXAMPLES)
        if str(config.init_lora_weights).startswith(MOVES_BASE_WEIGHTS):  # as applied: not on meta, nor in check
            self.initial = initialise.adapter_tensors(run.unwrapped_model)
        _fuse(run)

    @hookimpl
    def adapt_param_groups(self, run: Run) -> list[dict[str, Any]] | None:
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
    def adapt_save_artifacts(self, run: Run, directory: Path) -> None:
        with atomic_dir(directory / ADAPTER_DIR) as tmp:
            run.unwrapped_model.save_pretrained(tmp, save_embedding_layers=False)
            if self.initial is not None:
                from adapt_lora.initialise import as_plain_lora

                as_plain_lora(Path(tmp), self.initial)

    @hookimpl
    def adapt_load_artifacts(self, run: Run, directory: Path) -> None:
        from peft import PeftModel

        run.model = PeftModel.from_pretrained(run.model, directory / ADAPTER_DIR)
        _fuse(run)

    @hookimpl
    def adapt_export_model(self, run: Run, merge: bool) -> None:
        """Unmerged, the export is PEFT's adapter folder (`AutoPeftModelFor...` loads it); merged, a plain
        transformers model with each low-rank update added into its base weight."""
        if merge:
            run.model = merge_lora(run.unwrapped_model)


def _unknown_targets(model, targets) -> str:
    """The recipe problem of target modules the model does not have, with the names its linear layers go by."""
    import torch

    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    return (
        f"methods.lora.target_modules: {targets!r} names no module of this model; its linear layers are named "
        f'{", ".join(names)} (or use "all-linear")'
    )


def _fuse(run: Run) -> None:
    # under train.compile the compiler fuses PEFT's forward itself, and a per-layer forward would recompile per block
    if run.table(LoraTable).fused and not run.recipe.train.compile:
        from adapt_lora.fused import fuse_lora_layers  # imports torch: not at plugin discovery

        fuse_lora_layers(run.model)


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
