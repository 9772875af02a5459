"""Full fine-tuning: every parameter trains. The baseline every comparison needs.

The artifact is a standalone Hugging Face model folder (safetensors weights, config, tokenizer).
"""

from __future__ import annotations

from pathlib import Path

from adapt import Capability, PluginInfo, Run, hookimpl, load_model_folder, save_model_folder

ARTIFACT_DIR = "model"
TRAINS_THE_BASE = "full fine-tuning trains the base weights themselves"


@hookimpl
def adapt_plugin_info() -> PluginInfo:
    return PluginInfo(
        kind="method",
        summary="full fine-tuning: every parameter trains (the baseline)",
        provides=(Capability.TRAINS_PRETRAINED_WEIGHTS,),
        conflicts={
            "lora": f"LoRA learns low-rank updates of a frozen base; {TRAINS_THE_BASE}",
            "adapters": f"adapters train small modules beside a frozen base; {TRAINS_THE_BASE}",
            "head-only": "head-only freezes everything that full fine-tuning trains",
            "gradual-unfreezing": "gradual unfreezing already ends in full fine-tuning; use it on its own",
            "int8": "8-bit weights cannot be trained; full fine-tuning needs full-precision weights",
        },
    )


@hookimpl
def adapt_transform_model(run: Run) -> None:
    for param in run.model.parameters():
        param.requires_grad_(True)


@hookimpl
def adapt_save_artifacts(run: Run, directory: Path) -> None:
    save_model_folder(run, directory / ARTIFACT_DIR)


@hookimpl
def adapt_load_artifacts(run: Run, directory: Path) -> None:
    load_model_folder(run, directory / ARTIFACT_DIR)
