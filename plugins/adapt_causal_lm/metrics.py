"""Mean token loss, perplexity and next-token accuracy over the response tokens (labels other than -100)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from adapt_causal_lm.encode import IGNORED
from adapt_causal_lm.labelled_logits import labelled_targets

if TYPE_CHECKING:
    import torch


class PerplexityMetrics:
    def __init__(self) -> None:
        self.nll_sum = 0.0
        self.tokens = 0
        self.correct = 0

    def update(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> None:
        import torch

        if outputs.logits.dim() == 2:  # the labelled positions' logits only (labelled_logits)
            logits, targets = outputs.logits.float(), labelled_targets(batch["labels"])
        else:
            logits = outputs.logits[:, :-1].float()  # position t predicts token t + 1
            targets = batch["labels"][:, 1:]
        logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        keep = targets != IGNORED
        nll = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORED, reduction="sum")
        self.nll_sum += float(nll)
        self.tokens += int(keep.sum())
        self.correct += int(((logits.argmax(-1) == targets) & keep).sum())

    def merge(self, other: PerplexityMetrics) -> None:
        self.nll_sum += other.nll_sum
        self.tokens += other.tokens
        self.correct += other.correct

    def names(self) -> list[str]:
        return ["loss", "perplexity", "token_accuracy"]

    def compute(self) -> dict[str, float]:
        if not self.tokens:
            return {"loss": 0.0, "perplexity": 1.0, "token_accuracy": 0.0}
        loss = self.nll_sum / self.tokens
        return {"loss": loss, "perplexity": math.exp(loss), "token_accuracy": self.correct / self.tokens}
