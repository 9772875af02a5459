"""MSE, RMSE, MAE, Pearson and Spearman correlation, per target and averaged over targets.

Every prediction is kept (Spearman needs the ranks of all of them); a few floats per example."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along dim 0, ties sharing their average rank (as scipy.stats.rankdata)."""
    import torch

    result = torch.empty_like(values, dtype=torch.float64)
    for column in range(values.shape[1]):
        unique, inverse, counts = torch.unique(values[:, column], return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).double()
        result[:, column] = (ends - (counts.double() - 1) / 2)[inverse]
    return result


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per column; 0 where a column is constant."""
    import torch

    x, y = x - x.mean(0), y - y.mean(0)
    denominator = (x.pow(2).sum(0) * y.pow(2).sum(0)).sqrt()
    return torch.where(denominator > 0, (x * y).sum(0) / denominator.clamp(min=1e-300), torch.zeros_like(denominator))


class RegressionMetrics:
    def __init__(self, targets: list[str]):
        self.targets = targets
        self.predictions: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> None:
        self.predictions.append(outputs.logits.detach().double().cpu().view(-1, len(self.targets)))
        self.labels.append(batch["labels"].double().cpu().view(-1, len(self.targets)))

    def merge(self, other: RegressionMetrics) -> None:
        self.predictions.extend(other.predictions)
        self.labels.extend(other.labels)

    def names(self) -> list[str]:
        per_target = ["pearson", "spearman", "mse", "mae"]
        own = [f"{name}_{target}" for name in per_target for target in self.targets] if len(self.targets) > 1 else []
        return [*per_target, "rmse", *own]

    def compute(self) -> dict[str, float]:
        import torch

        if not self.predictions:
            return {}
        pred, true = torch.cat(self.predictions), torch.cat(self.labels)
        error = pred - true
        per_target = {
            "pearson": pearson(pred, true),
            "spearman": pearson(ranks(pred), ranks(true)),
            "mse": error.pow(2).mean(0),
            "mae": error.abs().mean(0),
        }
        result = {name: float(values.mean()) for name, values in per_target.items()}
        result["rmse"] = float(error.pow(2).mean().sqrt())
        if len(self.targets) > 1:
            for name, values in per_target.items():
                result.update({f"{name}_{target}": float(v) for target, v in zip(self.targets, values, strict=True)})
        return result
