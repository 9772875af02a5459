"""A quantised base through bitsandbytes: LLM.int8 (8-bit) or NF4/FP4 (4-bit, as in QLoRA).

The base model's linear layers load quantised; the task head (and anything a method adds later) stays
in full precision. A quantised base trains nothing by itself: name a method that trains on top of it
(lora, adapters or head-only). It reports the memory of the base weights before and after.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from adapt import AdaptError, Capability, PluginInfo, Run, Table, hookimpl
from adapt_int8.backend import check_backend
from adapt_int8.memory import weight_memory

NAME = "int8"


class Int8Table(Table):
    bits: Literal[8, 4] = 8
    """8: LLM.int8 linear layers; 4: NF4 or FP4 (QLoRA)."""
    threshold: float = Field(default=6.0, ge=0)
    """LLM.int8 outlier threshold: activations above it take the 16-bit path."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit only: NF4 (QLoRA) or FP4, the dtype the matmuls compute in, and nested quantisation."""
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """4-bit only: the dtype the dequantised weights are multiplied in."""
    double_quant: bool = True
    """4-bit only: quantise the quantisation constants too (about 0.4 bits per weight saved)."""
    skip_modules: list[str] = []
    """Further modules to keep in full precision (the head's are always kept)."""


class _OncePerMessage(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self.seen:
            return False
        self.seen.add(record.msg)
        return True


_ONCE = _OncePerMessage()


class Int8:
    """One instance per run: it remembers the memory measured before quantisation."""

    def __init__(self) -> None:
        self.memory: dict[str, float] = {}

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="method",
            table=Int8Table,
            summary="8-bit (LLM.int8) or 4-bit NF4 base via bitsandbytes; composes with lora / adapters / head-only",
            provides=(Capability.QUANTISES_BASE,),
            needs=(Capability.KEEPS_BASE_FROZEN,),
        )

    @hookimpl
    def adapt_configure(self) -> None:
        # bitsandbytes logs on every 8-bit matmul that it casts fp32 inputs to fp16: once is plenty.
        logger = logging.getLogger("bitsandbytes.autograd._functions")
        if _ONCE not in logger.filters:
            logger.addFilter(_ONCE)

    @hookimpl
    def adapt_model_load_kwargs(self, run: Run) -> dict[str, Any]:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise AdaptError(
                "methods.int8: bitsandbytes is not installed; pip install 'adapt-peft[int8]' (or bitsandbytes)"
            ) from None
        import torch
        from transformers import BitsAndBytesConfig

        table = run.table(Int8Table)
        if not run.planning:
            check_backend(table.bits, run.accelerator.device, getattr(torch, table.compute_dtype))
        # None (nothing of the head's to keep, as for a causal LM) lets transformers keep its defaults: the output
        # layer (lm_head) stays in full precision; an empty list would quantise it.
        keep = [*run.head_modules, *table.skip_modules] or None
        if table.bits == 8:
            config = BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_threshold=table.threshold, llm_int8_skip_modules=keep
            )
        else:
            config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=table.quant_type,
                bnb_4bit_compute_dtype=getattr(torch, table.compute_dtype),
                bnb_4bit_use_double_quant=table.double_quant,
                llm_int8_skip_modules=keep,
            )
        return {"quantization_config": config, "device_map": {"": str(run.accelerator.device)}}

    @hookimpl
    def adapt_transform_model(self, run: Run) -> None:
        for param in run.model.parameters():
            param.requires_grad_(False)  # methods applied after this one choose what trains
        for module in run.model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                # On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer for its fast kernel the first time
                # it runs in eval mode, keeping the scales in bf16, and unpacks it (rounded) when training
                # resumes: the trained model would then differ from its own restore, and a layer whose input is
                # narrower than the 64-wide block fails to repack. The portable kernel computes the same on
                # every CPU kind.
                module.support_avx512bf16_for_cpu = False
        self.memory = weight_memory(run.model)

    @hookimpl
    def adapt_load_artifacts(self, run: Run, directory: Path) -> None:
        self.adapt_transform_model(run)  # the base is quantised again from the hub weights; nothing is saved

    @hookimpl
    def adapt_export_model(self, run: Run, merge: bool) -> None:
        """Merging dequantises the base first (transformers' `dequantize`), so the merged export is a
        full-precision model holding the weights the run was trained against."""
        if not merge:
            return
        import torch

        quantised = [m for m in run.unwrapped_model.modules() if getattr(m, "hf_quantizer", None) is not None]
        if not quantised:
            raise AdaptError("methods.int8: the restored model holds no quantised transformers model to dequantise")
        dtype = run.recipe.model.dtype
        quantised[0].dequantize(dtype=torch.float32 if dtype == "auto" else getattr(torch, dtype))
        table = run.table(Int8Table)
        if table.bits == 8 or table.compute_dtype != "float32":
            # LLM.int8 also quantises activations (and 16-bit compute rounds), so the dequantised model, the more
            # exact of the two, differs by up to about a tenth of a logit (0.128 measured over SST-2's 872 rows)
            run.merge_tolerance = max(run.merge_tolerance, 0.25)

    @hookimpl
    def adapt_summary(self) -> dict[str, Any]:
        return {NAME: self.memory}
