"""Distillation toward the frozen base, "learning without forgetting": a loss term keeping the adapted
model's representations close to those the pretrained model gives the same batch.

The term is lambda times the distance between the two models' last transformer-block outputs over the
batch's real tokens (1 - cosine per token, or the mean squared difference). The base's outputs come from the
same model with its adapter switched off where the model is a PEFT model (no second copy of the weights),
else from a frozen copy taken when the method is applied (full fine-tuning, gradual unfreezing, adapters:
one more copy of the model). Either way the base runs once more per micro-batch, without gradients, in eval
mode (no dropout, so the random stream of training is untouched).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from adapt import Capability, PluginInfo, Run, Table, hookimpl, on_last_block_output

if TYPE_CHECKING:
    import torch

BASE_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


class DistillTable(Table):
    weight: float = Field(default=1.0, gt=0)
    """lambda: the term's weight."""
    distance: Literal["cosine", "mse"] = "cosine"
    """"cosine": 1 - cosine between the outputs per real token; "mse": their squared difference."""


class Distill:
    def __init__(self) -> None:
        self.base: torch.nn.Module | None = None  # a frozen copy, when the model is not a PEFT model
        self.captured: torch.Tensor | None = None  # the last block's output of the latest training forward
        self.in_base = False

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="method",
            table=DistillTable,
            summary="regulariser: keeps the last block's outputs close to the frozen base's on each batch",
            provides=(Capability.REGULARISER,),
            needs=(Capability.TRAINS_PRETRAINED_WEIGHTS, Capability.ADDS_MODULES),
            runs_after=(Capability.QUANTISES_BASE, Capability.TRAINS_PRETRAINED_WEIGHTS, Capability.ADDS_MODULES),
        )

    @hookimpl
    def adapt_transform_model(self, run: Run) -> None:
        if run.planning:
            return
        if not hasattr(run.model, "disable_adapter"):
            self.base = copy.deepcopy(run.model).eval().requires_grad_(False)
        on_last_block_output(run.model, self._capture)
        if self.base is not None:
            on_last_block_output(self.base, self._capture)

    def _capture(self, block: torch.nn.Module, hidden: torch.Tensor) -> None:
        if block.training or self.in_base:  # not in evaluations
            self.captured = hidden

    @hookimpl
    def adapt_loss_terms(self, run: Run, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        import torch

        if self.captured is None:
            return None
        adapted, self.captured = self.captured, None
        inputs = {k: v for k, v in batch.items() if k in BASE_INPUTS}
        self.in_base = True
        try:
            with torch.no_grad():
                if self.base is not None:
                    self.base(**inputs)
                else:
                    model = run.unwrapped_model
                    was_training = model.training
                    model.eval()
                    try:
                        with model.disable_adapter():
                            model(**inputs)
                    finally:
                        model.train(was_training)
        finally:
            self.in_base = False
        base, self.captured = self.captured, None
        table = run.table(DistillTable)
        if table.distance == "cosine":
            per_token = 1 - torch.nn.functional.cosine_similarity(adapted.float(), base.float(), dim=-1)
        else:
            per_token = (adapted.float() - base.float()).pow(2).mean(-1)
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(per_token) if mask is None else mask.to(per_token.dtype)
        return {"distill": table.weight * (per_token * mask).sum() / mask.sum().clamp(min=1)}
