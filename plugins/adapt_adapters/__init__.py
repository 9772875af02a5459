"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020) on a frozen base.

Houlsby places an adapter after the attention output and after the feed-forward output of every block;
Pfeiffer after the feed-forward output only. Adapters start as the identity, so before training the
adapted model computes exactly what the base model does. Only the adapters and the task head train and
are saved (safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from adapt import (
    AdaptError,
    Capability,
    PluginInfo,
    Run,
    Table,
    atomic_write_text,
    hookimpl,
    load_tensors_into,
    save_tensors,
)

ARTIFACT_DIR = "adapters"
WEIGHTS = "adapters.safetensors"


class AdaptersTable(Table):
    placement: Literal["houlsby", "pfeiffer"] = "pfeiffer"
    """Where the bottleneck goes: "pfeiffer" after each feed-forward block, "houlsby" after attention too."""
    reduction_factor: int = Field(default=16, ge=1)
    """Bottleneck width = hidden size / reduction_factor."""
    non_linearity: Literal["relu", "gelu", "swish", "tanh"] = "relu"  # the keys of inject.ACTIVATIONS
    """The activation between the down- and up-projection."""


def is_trained(name: str, run: Run) -> bool:
    return name.startswith(run.head_prefixes) or ".adapter." in name


@hookimpl
def adapt_plugin_info() -> PluginInfo:
    return PluginInfo(
        kind="method",
        table=AdaptersTable,
        summary="bottleneck adapters (Houlsby / Pfeiffer), identity at init; saves adapters and head",
        provides=(Capability.ADDS_MODULES, Capability.KEEPS_BASE_FROZEN),
        runs_after=(Capability.QUANTISES_BASE,),
    )


@hookimpl
def adapt_transform_model(run: Run) -> None:
    from adapt_adapters.inject import inject  # torch: not at plugin discovery

    table = run.table(AdaptersTable)
    inject(run.model, table.placement, table.reduction_factor, table.non_linearity)
    for name, param in run.model.named_parameters():
        param.requires_grad_(is_trained(name, run))


@hookimpl
def adapt_save_artifacts(run: Run, directory: Path) -> None:
    state = {n: p for n, p in run.unwrapped_model.named_parameters() if is_trained(n, run)}
    save_tensors(state, directory / ARTIFACT_DIR / WEIGHTS)
    table = run.table(AdaptersTable).model_dump()
    atomic_write_text(directory / ARTIFACT_DIR / "adapter_config.json", json.dumps(table, indent=2) + "\n")


@hookimpl
def adapt_load_artifacts(run: Run, directory: Path) -> None:
    adapt_transform_model(run)
    load_tensors_into(run.model, directory / ARTIFACT_DIR / WEIGHTS)


@hookimpl
def adapt_export_model(run: Run) -> None:
    raise AdaptError(
        f"methods.adapters: bottleneck adapters add layers (with a non-linearity) that "
        f"{type(run.unwrapped_model).__name__} does not have, so they cannot be merged into its weights, and "
        "neither transformers nor PEFT loads them; use the run directory with `adapt predict` / `adapt eval`"
    )
