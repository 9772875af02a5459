"""Multi-label metrics at a threshold: micro and macro F1 (as scikit-learn's `f1_score` on indicator
matrices, with zero_division=0), micro precision/recall, subset accuracy and the mean BCE loss.

Kept as per-label counts, so any eval size fits in memory and processes merge by addition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class MultiLabelMetrics:
    def __init__(self, num_labels: int, threshold: float):
        import torch

        self.threshold = threshold
        self.true_pos = torch.zeros(num_labels, dtype=torch.long)
        self.false_pos = torch.zeros(num_labels, dtype=torch.long)
        self.false_neg = torch.zeros(num_labels, dtype=torch.long)
        self.exact = 0
        self.examples = 0
        self.loss_sum = 0.0

    def update(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> None:
        import torch

        logits = outputs.logits.float()
        truth = batch["labels"].float()
        self.loss_sum += float(torch.nn.functional.binary_cross_entropy_with_logits(logits, truth, reduction="sum"))
        predicted = (logits.sigmoid() > self.threshold).cpu()
        truth = truth.bool().cpu()
        self.true_pos += (predicted & truth).sum(0)
        self.false_pos += (predicted & ~truth).sum(0)
        self.false_neg += (~predicted & truth).sum(0)
        self.exact += int((predicted == truth).all(1).sum())
        self.examples += truth.shape[0]

    def merge(self, other: MultiLabelMetrics) -> None:
        self.true_pos += other.true_pos
        self.false_pos += other.false_pos
        self.false_neg += other.false_neg
        self.exact += other.exact
        self.examples += other.examples
        self.loss_sum += other.loss_sum

    def names(self) -> list[str]:
        return ["micro_f1", "macro_f1", "micro_precision", "micro_recall", "subset_accuracy", "loss"]

    def compute(self) -> dict[str, float]:
        import torch

        tp, fp, fn = self.true_pos.double(), self.false_pos.double(), self.false_neg.double()
        per_label = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.zeros_like(tp))
        micro_tp, micro_fp, micro_fn = tp.sum(), fp.sum(), fn.sum()
        return {
            "micro_f1": _ratio(2 * micro_tp, 2 * micro_tp + micro_fp + micro_fn),
            "macro_f1": float(per_label.mean()),
            "micro_precision": _ratio(micro_tp, micro_tp + micro_fp),
            "micro_recall": _ratio(micro_tp, micro_tp + micro_fn),
            "subset_accuracy": self.exact / self.examples if self.examples else 0.0,
            "loss": self.loss_sum / (self.examples * len(tp)) if self.examples else 0.0,
        }


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
    return float(numerator / denominator) if denominator > 0 else 0.0
