"""Regression head: one or more real-valued targets per text (or text pair); MSE loss, Pearson/Spearman.

Targets are learnt as they are (no scaling), so predictions and the exported model's outputs are in the
targets' own units. Metrics with several targets are averaged, and also reported per target.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from adapt import (
    DataError,
    FirstTokenInputs,
    Head,
    Run,
    encode_splits,
    first_split,
    hookimpl,
    require_columns,
    tokenize_texts,
)
from adapt_regression.metrics import RegressionMetrics


class RegressionTable(FirstTokenInputs):
    target_columns: list[str] = Field(default=["label"], min_length=1)
    """Numeric columns to predict, one model output each."""


def encode_batch(examples: dict[str, list], *, tokenizer, text, pair, targets, max_length) -> dict[str, Any]:
    features = tokenize_texts(examples, tokenizer=tokenizer, text=text, pair=pair, max_length=max_length)
    features["labels"] = [[float(v) for v in row] for row in zip(*(examples[t] for t in targets), strict=True)]
    return features


def check_numeric(dataset, targets: list[str]) -> None:
    """Every target a finite number in every split: an `inf` or a missing value is bad data, named by its row."""
    import numpy as np

    for column in targets:
        dtype = first_split(dataset).features[column].dtype
        if not (dtype.startswith(("float", "int", "uint")) or dtype == "bool"):
            raise DataError(f"task.target_columns: column '{column}' holds {dtype}, not numbers")
        for split, data in dataset.items():
            values = np.asarray(data.with_format("numpy")[column], dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                row, value = int(bad[0]) + 1, float(values[bad[0]])
                shown = "missing" if np.isnan(value) else f"= {value}"
                raise DataError(
                    f"task.target_columns: row {row} of the {split} split has '{column}' {shown}, not a finite "
                    f"number ({bad.size} such row{'s' if bad.size > 1 else ''}); fix or drop them"
                )


class Regression(Head):
    table = RegressionTable
    reads_first_token = True  # its classifier reads the [CLS] row only
    summary = "real-valued targets; MSE, Pearson, Spearman"
    state_file = "targets.json"
    state_key = "targets"

    def resolve_names(self, run: Run) -> list[str]:
        """The recipe's target columns (a restored run has those it saved)."""
        return list(run.table(RegressionTable).target_columns)

    def config(self, run: Run, names: list[str]) -> dict[str, Any]:
        return {**super().config(run, names), "problem_type": "regression"}

    def encode(self, run: Run, dataset) -> Any:
        table = run.table(RegressionTable)
        targets = self.output_names(run)
        columns = {**table.input_columns(), **{f"target_columns[{i}]": t for i, t in enumerate(targets)}}
        require_columns(dataset, columns)
        check_numeric(dataset, targets)
        return encode_splits(
            dataset,
            encode_batch,
            tokenizer=run.tokenizer,
            text=table.text_column,
            pair=table.text_pair_column,
            targets=targets,
            max_length=run.recipe.data.max_length,
        )

    @hookimpl
    def adapt_compute_loss(self, batch: dict[str, Any], outputs: Any):
        """MSE averaged over examples and targets, in float32 whatever the autocast dtype."""
        import torch

        logits = outputs.logits.float()
        return torch.nn.functional.mse_loss(logits, batch["labels"].float().view_as(logits))

    def make_metrics(self, run: Run) -> RegressionMetrics:
        return RegressionMetrics(self.output_names(run))

    def format(self, run: Run, given: Any, logits: Any, features: dict[str, Any]) -> dict[str, Any]:
        return {"text": given, **dict(zip(self.names, logits.tolist(), strict=True))}
