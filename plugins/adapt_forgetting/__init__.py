"""Forgetting, measured: how far training moved the model's representations of a held reference sample.

Before the first step the plugin embeds a few hundred reference texts with the model as it starts (the
pretrained encoder: LoRA and adapters are the identity at that point), and after the final evaluation it
embeds them again. `summary.json` -> `forgetting` then holds, for the last transformer block's outputs,
mean-pooled per text:

- `cka`: linear CKA between the two sets of embeddings (1: the same geometry, up to rotation and scale);
- `drift`: 1 - cka, the headline figure;
- `similarity_correlation`: the Pearson correlation of the texts' pairwise cosine similarities before and after;
- `cosine`: the mean cosine between a text's embedding before and after (drift in place, not only in shape);
- the model's own pretraining loss on the reference texts, where it has that head: for a causal LM head
  `lm_loss_before` / `lm_loss_after` (the language-model loss); for a checkpoint saved with its masked-LM head
  (BERT-like) `mlm_loss_before` / `mlm_loss_after`, that frozen head reading the encoder's outputs on the
  same masked texts before and after.

The reference defaults to the eval split's texts; `reference_file` names held-out text of another kind
(general text, to see what a task run does to everything else).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from adapt import (
    DataError,
    PluginInfo,
    Run,
    Table,
    hookimpl,
    mask_tokens,
    mlm_loss,
    on_last_block_output,
    pretrained_mlm_head,
)

from .measures import cosine_per_row, linear_cka, similarity_correlation
from .reference import reference_texts

if TYPE_CHECKING:
    import torch


class ForgettingTable(Table):
    enabled: bool = True
    """Turn the measurement off (it costs two passes over `samples` texts)."""
    reference_file: str | None = None
    """A .txt (one text per line), .jsonl, .csv, .tsv or .parquet file of reference texts; default: the eval split."""
    text_column: str | None = None
    """The column holding the texts (default: the head's text column, else the first text column)."""
    samples: int = Field(default=256, ge=4)
    """How many reference texts are compared before and after training."""
    max_length: int = Field(default=128, ge=8)
    """Reference texts are truncated to this many tokens."""
    batch_size: int = Field(default=16, ge=1)
    """Reference texts per forward pass."""


class Forgetting:
    def __init__(self) -> None:
        self.base: torch.Tensor | None = None  # reference embeddings of the starting model, on the CPU
        self.before: dict[str, float] = {}  # pretraining losses of the starting model
        self.texts: list[str] = []

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="infrastructure",
            table=ForgettingTable,
            summary="measures representation drift on a reference sample (summary.json: forgetting)",
        )

    @hookimpl(tryfirst=True)  # before a method installs a feature cache that would bypass the blocks
    def adapt_on_train_start(self, run: Run) -> None:
        table = run.table(ForgettingTable)
        if not table.enabled:
            return
        self.texts = reference_texts(run, table)
        if self.base is None:  # else restored from the checkpoint: the model now is not the starting one
            self.base, self.before = self._measure(run, table, None)

    @hookimpl
    def adapt_checkpoint_state(self) -> dict[str, Any] | None:
        if self.base is None:
            return None
        return {"base": self.base, "before": self.before}

    @hookimpl
    def adapt_load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.base, self.before = state["base"], dict(state["before"])

    @hookimpl
    def adapt_summary(self, run: Run) -> dict[str, Any] | None:
        table = run.table(ForgettingTable)
        if self.base is None or not table.enabled:
            return None
        after, losses = self._measure(run, table, self.base)
        result = {
            "reference_texts": len(self.texts),
            "reference": table.reference_file or "eval split",
            "cka": round(linear_cka(self.base, after), 6),
            "similarity_correlation": round(similarity_correlation(self.base, after), 6),
            "cosine": round(float(cosine_per_row(self.base, after).mean()), 6),
        }
        result["drift"] = round(1 - result["cka"], 6)
        for name, value in losses.items():
            if name in self.before:
                result.update({f"{name}_before": round(self.before[name], 6), f"{name}_after": round(value, 6)})
        return {"forgetting": result}

    def _measure(self, run: Run, table: ForgettingTable, base: torch.Tensor | None):
        """Mean-pooled outputs of the last transformer block for every reference text, and the pretraining
        losses the model has a head for ({"lm_loss": ..., "mlm_loss": ...}). A batch whose blocks did not run (a
        frozen backbone's feature cache served it) keeps the `base` rows, which are what such a cache holds."""
        import torch

        model = run.model
        captured: list[torch.Tensor] = []

        causal = run.recipe.head == "causal-lm"
        mlm_head = pretrained_mlm_head(run) if not causal and run.tokenizer.mask_token_id is not None else None
        generator = torch.Generator().manual_seed(0)  # the same masks before and after training
        hook = on_last_block_output(run.unwrapped_model, lambda block, hidden: captured.append(hidden))
        was_training = model.training
        model.eval()
        rows, sums, counts = [], {"lm_loss": 0.0, "mlm_loss": 0.0}, {"lm_loss": 0, "mlm_loss": 0}
        try:
            with torch.inference_mode(), run.accelerator.autocast():
                for start in range(0, len(self.texts), table.batch_size):
                    texts = self.texts[start : start + table.batch_size]
                    encoded = run.tokenizer(
                        texts, truncation=True, max_length=table.max_length, padding=True, return_tensors="pt"
                    )
                    batch = {k: v.to(run.accelerator.device) for k, v in encoded.items()}
                    captured.clear()
                    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100) if causal else None
                    outputs = model(**batch, **({"labels": labels} if causal else {}))
                    if causal and getattr(outputs, "loss", None) is not None:
                        tokens = int((labels[:, 1:] != -100).sum())
                        sums["lm_loss"] += float(outputs.loss) * tokens
                        counts["lm_loss"] += tokens
                    if captured:
                        mask = batch["attention_mask"].unsqueeze(-1).to(captured[-1].dtype)
                        pooled = (_text_positions(captured[-1], mask) * mask).sum(1) / mask.sum(1).clamp(min=1)
                        rows.append(pooled.float().cpu())
                    elif base is not None:
                        rows.append(base[start : start + table.batch_size])
                    else:
                        raise DataError("plugins.forgetting: the model's blocks did not run on the reference texts")
                    if mlm_head is not None:
                        masked, targets = mask_tokens(
                            batch["input_ids"], batch["attention_mask"], run.tokenizer, generator
                        )
                        captured.clear()
                        model(**{**batch, "input_ids": masked})
                        if captured:
                            tokens = int((targets != -100).sum())
                            hidden = _text_positions(captured[-1], targets)
                            sums["mlm_loss"] += float(mlm_loss(mlm_head, hidden, targets)) * tokens
                            counts["mlm_loss"] += tokens
        finally:
            hook.remove()
            model.train(was_training)
        losses = {name: sums[name] / counts[name] for name in sums if counts[name]}
        return torch.cat(rows), losses


def _text_positions(hidden: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The block's output at the text's positions: without the virtual tokens a method put before them (prompt
    tuning, p-tuning), which have no counterpart in the model before training."""
    return hidden[:, hidden.shape[1] - like.shape[1] :]
