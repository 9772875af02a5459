"""Sequence classification head: one label per text (or text pair); accuracy and macro-F1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from adapt import (
    PluginInfo,
    Run,
    Table,
    atomic_write_text,
    hookimpl,
    label_config,
    load_task_model,
    require_columns,
    task_head_modules,
)
from adapt_sequence_classification.labels import class_weights, label_names, label_to_id
from adapt_sequence_classification.metrics import ClassificationMetrics

NAME = "sequence-classification"


class SequenceClassificationTable(Table):
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    #: Normally read from the data (ClassLabel names, or the distinct label values).
    num_labels: int | None = Field(default=None, ge=2)
    #: Names for the classes in id order (for integer labels), or the id order of string labels.
    label_names: list[str] | None = None
    #: Loss weight per class, or "balanced" (inverse class frequency in the training split).
    class_weights: list[float] | Literal["balanced"] | None = None


def encode_batch(examples: dict[str, list], *, tokenizer, text, pair, label, mapping, max_length) -> dict[str, Any]:
    features = tokenizer(examples[text], examples[pair] if pair else None, truncation=True, max_length=max_length)
    features["labels"] = [mapping[value] for value in examples[label]] if mapping else examples[label]
    return features


def check_columns(dataset, table: SequenceClassificationTable) -> None:
    columns = {"text_column": table.text_column, "label_column": table.label_column}
    if table.text_pair_column:
        columns["text_pair_column"] = table.text_pair_column
    require_columns(dataset, columns)


class SequenceClassification:
    """Registered per run (a class entry point), so the label list is this run's."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.weights: list[float] | None = None
        self.weight_tensor = None

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="head", table=SequenceClassificationTable, summary="one label per text; accuracy, macro-F1"
        )

    def _resolve_labels(self, run: Run) -> list[str]:
        """Check the recipe's columns against the data, then read the label names (once per run)."""
        if not self.labels:
            table: SequenceClassificationTable = run.table(NAME)
            check_columns(run.dataset, table)
            self.labels = label_names(run.dataset, table.label_column, table.num_labels, table.label_names)
        return self.labels

    @hookimpl
    def adapt_encode(self, run: Run, dataset) -> Any:
        table: SequenceClassificationTable = run.table(NAME)
        labels = self._resolve_labels(run)
        encoded = dataset.map(
            encode_batch,
            batched=True,
            remove_columns=dataset["train"].column_names,
            fn_kwargs={
                "tokenizer": run.tokenizer,
                "text": table.text_column,
                "pair": table.text_pair_column,
                "label": table.label_column,
                "mapping": label_to_id(dataset["train"], table.label_column, labels),
                "max_length": run.recipe.data.max_length,
            },
            desc="tokenising",
        )
        self.weights = class_weights(encoded["train"], labels, table.class_weights)
        return encoded

    @hookimpl
    def adapt_compute_loss(self, batch: dict[str, Any], outputs: Any):
        """Class-weighted cross-entropy when the recipe asks for weights; otherwise the model's own loss."""
        if self.weights is None:
            return None
        import torch

        logits = outputs.logits
        if self.weight_tensor is None:
            self.weight_tensor = torch.tensor(self.weights, dtype=torch.float32, device=logits.device)
        return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], weight=self.weight_tensor)

    @hookimpl
    def adapt_save_artifacts(self, run: Run, directory: Path) -> None:
        record = {"labels": self.labels, "class_weights": self.weights}
        atomic_write_text(directory / "labels.json", json.dumps(record, indent=2) + "\n")

    @hookimpl
    def adapt_head_modules(self, run: Run) -> list[str]:
        from transformers import AutoModelForSequenceClassification

        return task_head_modules(run, AutoModelForSequenceClassification, **label_config(self._resolve_labels(run)))

    @hookimpl
    def adapt_load_model(self, run: Run, load_kwargs: dict[str, Any]):
        from transformers import AutoModelForSequenceClassification

        labels = label_config(self._resolve_labels(run))
        model = load_task_model(run, AutoModelForSequenceClassification, load_kwargs, "SEQ_CLS", **labels)
        if model.config.pad_token_id is None and run.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = run.tokenizer.pad_token_id  # decoder backbones pool on the last real token
        return model

    @hookimpl
    def adapt_make_collator(self, run: Run):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(run.tokenizer)

    @hookimpl
    def adapt_make_metrics(self, run: Run) -> ClassificationMetrics:
        return ClassificationMetrics(len(self._resolve_labels(run)))
