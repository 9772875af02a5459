"""Accuracy, macro-F1 and loss, accumulated as a confusion matrix so any eval size fits in memory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class ClassificationMetrics:
    def __init__(self, num_labels: int):
        import torch

        self.num_labels = num_labels
        self.confusion = torch.zeros(num_labels, num_labels, dtype=torch.long)
        self.loss_sum = 0.0

    def update(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> None:
        import torch

        logits = outputs.logits.float()
        labels = batch["labels"]
        k = self.num_labels
        pairs = (labels * k + logits.argmax(-1)).cpu()
        self.confusion += torch.bincount(pairs, minlength=k * k).view(k, k)
        self.loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))

    def merge(self, other: ClassificationMetrics) -> None:
        self.confusion += other.confusion
        self.loss_sum += other.loss_sum

    def names(self) -> list[str]:
        return ["accuracy", "macro_f1", "loss"]

    def compute(self) -> dict[str, float]:
        import torch

        confusion = self.confusion.double()
        total = confusion.sum()
        true_pos = confusion.diag()
        predicted, actual = confusion.sum(0), confusion.sum(1)
        present = (predicted + actual) > 0  # like scikit-learn: classes seen in labels or predictions
        f1 = torch.where(present, 2 * true_pos / (predicted + actual).clamp(min=1), torch.zeros_like(true_pos))
        return {
            "accuracy": float(true_pos.sum() / total) if total else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "loss": self.loss_sum / float(total) if total else 0.0,
        }
