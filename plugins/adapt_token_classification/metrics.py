"""Entity-level precision/recall/F1 (CoNLL, via seqeval) and token accuracy over labelled positions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from adapt_token_classification.align import IGNORED

if TYPE_CHECKING:
    import torch


class EntityMetrics:
    def __init__(self, tags: list[str]):
        self.tags = tags
        self.true: list[list[str]] = []
        self.pred: list[list[str]] = []
        self.loss_sum = 0.0

    def update(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> None:
        import torch

        logits = outputs.logits.float()
        labels = batch["labels"]
        self.loss_sum += float(
            torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORED, reduction="sum"
            )
        )
        predictions = logits.argmax(-1).cpu()
        labels = labels.cpu()
        for row_pred, row_true in zip(predictions, labels, strict=True):
            keep = row_true != IGNORED
            self.true.append([self.tags[i] for i in row_true[keep].tolist()])
            self.pred.append([self.tags[i] for i in row_pred[keep].tolist()])

    def merge(self, other: EntityMetrics) -> None:
        self.true.extend(other.true)
        self.pred.extend(other.pred)
        self.loss_sum += other.loss_sum

    def names(self) -> list[str]:
        return ["f1", "precision", "recall", "token_accuracy", "loss"]

    def compute(self) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        tokens = sum(len(row) for row in self.true)
        correct = sum(
            t == p for true, pred in zip(self.true, self.pred, strict=True) for t, p in zip(true, pred, strict=True)
        )
        return {
            "f1": float(f1_score(self.true, self.pred)),
            "precision": float(precision_score(self.true, self.pred)),
            "recall": float(recall_score(self.true, self.pred)),
            "token_accuracy": correct / tokens if tokens else 0.0,
            "loss": self.loss_sum / tokens if tokens else 0.0,
        }
