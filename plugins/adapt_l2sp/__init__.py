"""L2-SP (Li et al., 2018): a loss term pulling the pretrained weights back toward their pretrained values,
lambda/2 * ||theta - theta_0||^2 over the pretrained parameters that train (never the fresh head), so that
full fine-tuning or gradual unfreezing keeps more of what the model knew.

theta_0 is copied when the method is applied, on the weights just loaded from the checkpoint (a resumed run
applies it to freshly loaded weights too, before the checkpoint's are put in), so it costs one more copy of
the trained weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from adapt import Capability, PluginInfo, Run, Table, hookimpl

if TYPE_CHECKING:
    import torch


class L2SPTable(Table):
    weight: float = Field(default=0.1, gt=0)
    """lambda: the term's weight. Its gradient is lambda * (theta - theta_0) per weight, so 0.01-1 is typical."""


class L2SP:
    def __init__(self) -> None:
        self.anchors: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="method",
            table=L2SPTable,
            summary="regulariser: lambda/2 * ||theta - theta_0||^2 toward the pretrained weights",
            provides=(Capability.REGULARISER,),
            needs=(Capability.TRAINS_PRETRAINED_WEIGHTS,),
            runs_after=(Capability.TRAINS_PRETRAINED_WEIGHTS,),
        )

    @hookimpl
    def adapt_transform_model(self, run: Run) -> None:
        if run.planning:
            return
        heads = run.head_prefixes
        # The Parameter objects themselves: whatever a later wrapper renames, the same tensors train.
        self.anchors = [
            (param, param.detach().clone())
            for name, param in run.model.named_parameters()
            if param.is_floating_point() and not (heads and name.startswith(heads))
        ]

    @hookimpl
    def adapt_loss_terms(self, run: Run) -> dict[str, torch.Tensor] | None:
        import torch

        trained = [(p, p0) for p, p0 in self.anchors if p.requires_grad]
        if not trained:
            return None
        squared = torch.stack([(p - p0).pow(2).sum() for p, p0 in trained]).sum()
        return {"l2sp": 0.5 * run.table(L2SPTable).weight * squared}
