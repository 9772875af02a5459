"""adapt-anchor: weight * mean |theta - theta_0| over the pretrained parameters that train, as a loss term."""

from __future__ import annotations

import torch
from pydantic import Field

from adapt import AdaptError, Capability, PluginInfo, Run, Table, hookimpl

NAME = "anchor"


class AnchorTable(Table):
    """[methods.anchor]"""

    weight: float = Field(default=0.1, gt=0, description="lambda: the term's weight (its gradient is lambda * sign)")


class Anchor:
    """A class entry point: one instance per run holds that run's theta_0."""

    def __init__(self) -> None:
        self.anchors: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.count = 0

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        # A method: it takes part only when a recipe names it, after the methods that decide what trains.
        return PluginInfo(
            kind="method",
            table=AnchorTable,
            summary="regulariser: weight * mean |theta - theta_0| over the trained pretrained weights",
            provides=(Capability.REGULARISER,),
            runs_after=(Capability.TRAINS_PRETRAINED_WEIGHTS,),
            requires_api="1.2",  # capabilities are new in hook API 1.2 (adapt_on_model_loaded in 1.1)
        )

    @hookimpl
    def adapt_on_model_loaded(self, run: Run) -> None:
        """theta_0: the weights as loaded, before any method wraps or freezes them. The Parameter objects are kept,
        so the term follows them whatever a method renames."""
        if run.planning:  # `adapt plan`: meta tensors, nothing to copy
            return
        self.anchors = [(p, p.detach().clone()) for p in run.pretrained_parameters().values() if p.is_floating_point()]

    @hookimpl
    def adapt_on_train_start(self, run: Run) -> None:
        self.anchors = [(p, p0) for p, p0 in self.anchors if p.requires_grad]
        if not self.anchors:
            raise AdaptError(
                f"methods.{NAME}: no pretrained weight trains with methods {', '.join(run.recipe.methods)}, so there "
                "is nothing to hold back; combine it with full, gradual-unfreezing or top-layers"
            )
        self.count = sum(p0.numel() for _, p0 in self.anchors)

    @hookimpl
    def adapt_loss_terms(self, run: Run) -> dict[str, torch.Tensor] | None:
        if not self.anchors:  # `adapt plan` calls the loss hooks too
            return None
        distance = torch.stack([(p - p0).abs().sum() for p, p0 in self.anchors if p.requires_grad]).sum()
        return {NAME: run.table(NAME).weight * distance / self.count}
