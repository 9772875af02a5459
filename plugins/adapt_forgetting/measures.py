"""Similarity of two sets of embeddings of the same texts (rows), before and after training."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al., 2019): 1 when `y` is `x` up to an orthogonal
    transform and a scale, lower as the geometry of the texts changes. Computed in float64."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (x.T @ y).norm() ** 2
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()).clamp(min=1e-30))


def similarity_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of the pairwise cosine similarities of the texts, before and after."""
    import torch

    upper = torch.triu_indices(len(x), len(x), offset=1)

    def pairs(z: torch.Tensor) -> torch.Tensor:
        z = torch.nn.functional.normalize(z.double(), dim=1)
        return (z @ z.T)[upper[0], upper[1]]

    a, b = pairs(x), pairs(y)
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp(min=1e-30))


def cosine_per_row(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=1)
