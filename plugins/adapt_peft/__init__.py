"""Any other PEFT method by name: IA³, prompt tuning, prefix tuning, p-tuning, LoHa, LoKr, VeRA, OFT, BOFT,
FourierFT, LayerNorm tuning and the rest of PEFT's catalogue, with PEFT's own options.

    [methods.peft]
    method = "ia3"                                    # PEFT's name for it (adapt plugins peft METHOD: its options)
    target_modules = ["key", "value", "output.dense"]  # everything else goes to PEFT's config class as it is
    feedforward_modules = ["output.dense"]

The options are checked against the method's config dataclass when the recipe is read (`adapt_peft.options`); the
task type comes from the head, and the head's modules train and are saved with the adapter, so
`PeftModel.from_pretrained(base_with_head, run_dir/"adapter")` restores the trained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, model_validator

from adapt import Capability, PluginInfo, RecipeError, Run, Table, atomic_dir, hookimpl

ADAPTER_DIR = "adapter"


class PeftTable(Table):
    """Any other key is an option of the method's PEFT config class (`adapt plugins peft METHOD` lists them)."""

    model_config = ConfigDict(extra="allow")
    method: str
    """PEFT's name of the method: "ia3", "prompt_tuning", "prefix_tuning", "p_tuning", "loha", "lokr", "vera", "oft",
    "boft", "fourierft", "ln_tuning", ... (`adapt plugins peft` lists them all)."""

    @model_validator(mode="after")
    def _options_are_the_methods(self) -> PeftTable:
        from adapt_peft.options import check_options

        check_options(self.method, self.options)
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _variants() -> dict[str, list[dict[str, str]]]:
    from adapt_peft.options import option_rows, runnable_methods

    return {name: option_rows(config_class) for name, config_class in runnable_methods().items()}


def _check_prefix_support(model) -> None:
    """Prefix tuning hands its prefixes to the model as a KV cache: PEFT finds out that a model takes none only in
    the first forward pass, the check made here, before training."""
    import inspect

    from peft import PeftType

    config = model.peft_config[model.active_adapter]
    if config.peft_type != PeftType.PREFIX_TUNING or config.task_type in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
        return
    backbone = getattr(model, "transformer_backbone_name", None)
    for module in (model.base_model, model.base_model.get_submodule(backbone) if backbone else None):
        if module is not None and "past_key_values" in inspect.signature(module.forward).parameters:
            return
    raise ValueError("Model does not support past key values which are required for prefix tuning.")


class Peft:
    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="method",
            table=PeftTable,
            summary="any other PEFT method by name (IA3, prompt/prefix tuning, LoHa, LoKr, VeRA, OFT, ...)",
            provides=(Capability.ADDS_MODULES, Capability.KEEPS_BASE_FROZEN),
            runs_after=(Capability.QUANTISES_BASE,),
            conflicts={"lora": "both wrap the model in a PEFT model: one PEFT method per run"},
            variants=_variants,
        )

    @hookimpl
    def adapt_transform_model(self, run: Run) -> None:
        from peft import PromptLearningConfig, get_peft_model

        from adapt_peft.options import config_class_of, settable_fields

        table = run.table(PeftTable)  # validated with the recipe: its method and options are PEFT's
        config_class = config_class_of(table.method)
        options = table.options
        if "modules_to_save" in settable_fields(config_class) and run.head_modules:
            options["modules_to_save"] = [*run.head_modules, *(options.get("modules_to_save") or [])]
        try:
            task_type = run.peft_task_type(prompt_learning=issubclass(config_class, PromptLearningConfig))
            run.model = get_peft_model(run.model, config_class(task_type=task_type, **options))
            _check_prefix_support(run.model)
        except (ValueError, TypeError, NotImplementedError) as exc:  # PEFT's checks of the config against the model
            raise RecipeError(f"methods.peft: PEFT cannot apply {table.method} to this model: {exc}") from None

    @hookimpl
    def adapt_save_artifacts(self, run: Run, directory: Path) -> None:
        with atomic_dir(directory / ADAPTER_DIR) as tmp:
            run.unwrapped_model.save_pretrained(tmp, save_embedding_layers=False)

    @hookimpl
    def adapt_load_artifacts(self, run: Run, directory: Path) -> None:
        from peft import PeftModel

        run.model = PeftModel.from_pretrained(run.model, directory / ADAPTER_DIR)

    @hookimpl
    def adapt_export_model(self, run: Run, merge: bool) -> None:
        """Unmerged, the export is PEFT's adapter folder; merged, the base with the method folded into its weights,
        where PEFT can fold it (not for prompt, prefix or p-tuning, whose virtual tokens are inputs)."""
        if not merge:
            return
        model, method = run.unwrapped_model, run.table(PeftTable).method
        if model.peft_config[model.active_adapter].is_prompt_learning:
            raise RecipeError(
                f"adapt export --merge: {method} adds virtual tokens to the inputs, which no weight of the base can "
                "hold; export without --merge (PEFT's adapter folder)"
            )
        if not hasattr(model, "merge_and_unload"):
            raise RecipeError(f"adapt export --merge: PEFT cannot merge {method}; export without --merge")
        run.model = model.merge_and_unload()
