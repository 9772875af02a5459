"""Auxiliary masked-language modelling: L = L_task + lambda * L_MLM, the pretraining loss kept alive while the
task trains, through the checkpoint's own (frozen) masked-LM head on the adapted encoder's outputs.

Each micro-batch is masked again (`rate` of its real tokens, drawn from a generator of its own seeded by the
run's seed and step, so training's random stream and exact resumption are untouched) and run through the
model once more. Needs a checkpoint saved with its MLM head (BERT-like models such as bert-base-uncased);
all-MiniLM-L6-v2 has none, and `distill` is the regulariser that works for any model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from adapt import (
    AdaptError,
    Capability,
    PluginInfo,
    Run,
    Table,
    hookimpl,
    mask_tokens,
    mlm_loss,
    on_last_block_output,
    pretrained_mlm_head,
)

if TYPE_CHECKING:
    import torch

MODEL_INPUTS = ("attention_mask", "token_type_ids", "position_ids")


class MLMTable(Table):
    weight: float = Field(default=0.1, gt=0)
    """lambda: the term's weight."""
    rate: float = Field(default=0.15, gt=0, lt=1)
    """Share of each text's real tokens masked."""


class AuxiliaryMLM:
    def __init__(self) -> None:
        self.head: torch.nn.Module | None = None
        self.hidden: torch.Tensor | None = None
        self.masking = False
        self.micro = (0, 0)  # (step, micro-batch within it): the masking generator's seed

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="method",
            table=MLMTable,
            summary="regulariser: lambda * the checkpoint's own masked-LM loss on each batch (BERT-like models)",
            provides=(Capability.REGULARISER,),
            needs=(Capability.TRAINS_PRETRAINED_WEIGHTS, Capability.ADDS_MODULES),
            runs_after=(Capability.QUANTISES_BASE, Capability.TRAINS_PRETRAINED_WEIGHTS, Capability.ADDS_MODULES),
        )

    @hookimpl
    def adapt_transform_model(self, run: Run) -> None:
        if run.planning:
            return
        self.head = pretrained_mlm_head(run)
        if self.head is None or run.tokenizer.mask_token_id is None:
            saved = getattr(run.unwrapped_model.config, "architectures", None) or ["no architecture named"]
            raise AdaptError(
                f"methods.mlm: {run.recipe.model.name} was saved without a masked-LM head ({', '.join(saved)}), so "
                "there is no pretraining loss to keep; use a BERT-like checkpoint that has one, or [methods.distill]"
            )
        on_last_block_output(run.model, self._capture)

    def _capture(self, block: torch.nn.Module, hidden: torch.Tensor) -> None:
        if self.masking:
            self.hidden = hidden

    @hookimpl
    def adapt_loss_terms(self, run: Run, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        import torch

        if self.head is None:
            return None
        table = run.table(MLMTable)
        step, micro = self.micro
        self.micro = (run.step, micro + 1 if step == run.step else 0)
        generator = torch.Generator().manual_seed(run.recipe.train.seed * 1_000_003 + run.step * 1009 + self.micro[1])
        masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], run.tokenizer, generator, table.rate)
        self.masking = True
        try:
            run.model(input_ids=masked, **{k: v for k, v in batch.items() if k in MODEL_INPUTS})
        finally:
            self.masking = False
        hidden, self.hidden = self.hidden, None
        return {"mlm": table.weight * mlm_loss(self.head, hidden, labels)}
