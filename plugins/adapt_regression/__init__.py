"""Regression head: one or more real-valued targets per text (or text pair); MSE loss, Pearson/Spearman.

Targets are learnt as they are (no scaling), so predictions and the exported model's outputs are in the
targets' own units. Metrics with several targets are averaged, and also reported per target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from adapt import (
    DataError,
    PluginInfo,
    Run,
    TextInputs,
    encode_splits,
    encode_texts,
    example_logits,
    first_split,
    hookimpl,
    load_head_state,
    load_task_model,
    require_columns,
    save_head_state,
    task_head_modules,
    tokenize_texts,
)
from adapt_regression.metrics import RegressionMetrics

NAME = "regression"
STATE = "targets.json"


class RegressionTable(TextInputs):
    target_columns: list[str] = Field(default=["label"], min_length=1)
    """Numeric columns to predict, one model output each."""


def encode_batch(examples: dict[str, list], *, tokenizer, text, pair, targets, max_length) -> dict[str, Any]:
    features = tokenize_texts(examples, tokenizer=tokenizer, text=text, pair=pair, max_length=max_length)
    features["labels"] = [[float(v) for v in row] for row in zip(*(examples[t] for t in targets), strict=True)]
    return features


def check_numeric(dataset, targets: list[str]) -> None:
    for column in targets:
        dtype = first_split(dataset).features[column].dtype
        if not (dtype.startswith(("float", "int", "uint")) or dtype == "bool"):
            raise DataError(f"task.target_columns: column '{column}' holds {dtype}, not numbers")


class Regression:
    def __init__(self) -> None:
        self.targets: list[str] = []

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(kind="head", table=RegressionTable, summary="real-valued targets; MSE, Pearson, Spearman")

    def _targets(self, run: Run) -> list[str]:
        """The recipe's target columns (or, for a restored run, those it saved)."""
        if not self.targets:
            self.targets = list(run.table(RegressionTable).target_columns)
        return self.targets

    def _config(self, run: Run) -> dict[str, Any]:
        targets = self._targets(run)
        return {
            "num_labels": len(targets),
            "problem_type": "regression",
            "id2label": dict(enumerate(targets)),
            "label2id": {t: i for i, t in enumerate(targets)},
        }

    @hookimpl
    def adapt_head_modules(self, run: Run) -> list[str]:
        from transformers import AutoModelForSequenceClassification

        return task_head_modules(run, AutoModelForSequenceClassification, **self._config(run))

    @hookimpl
    def adapt_load_model(self, run: Run, load_kwargs: dict[str, Any]):
        from transformers import AutoModelForSequenceClassification

        config = self._config(run)
        return load_task_model(run, AutoModelForSequenceClassification, load_kwargs, "SEQ_CLS", **config)

    @hookimpl
    def adapt_encode(self, run: Run, dataset) -> Any:
        table = run.table(RegressionTable)
        targets = self._targets(run)
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
    def adapt_make_collator(self, run: Run):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(run.tokenizer)

    @hookimpl
    def adapt_compute_loss(self, batch: dict[str, Any], outputs: Any):
        """MSE averaged over examples and targets, in float32 whatever the autocast dtype."""
        import torch

        logits = outputs.logits.float()
        return torch.nn.functional.mse_loss(logits, batch["labels"].float().view_as(logits))

    @hookimpl
    def adapt_make_metrics(self, run: Run) -> RegressionMetrics:
        return RegressionMetrics(self._targets(run))

    @hookimpl
    def adapt_save_artifacts(self, directory: Path) -> None:
        save_head_state(directory, {"targets": self.targets}, STATE)

    @hookimpl
    def adapt_restore_state(self, directory: Path) -> None:
        self.targets = load_head_state(directory, NAME, STATE)["targets"]

    @hookimpl
    def adapt_predict(self, run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        table = run.table(RegressionTable)
        texts, features = encode_texts(run, rows, table)
        outputs = example_logits(run, features, self.adapt_make_collator(run))
        return [
            {"text": text, **dict(zip(self.targets, values.tolist(), strict=True))}
            for text, values in zip(texts, outputs, strict=True)
        ]
