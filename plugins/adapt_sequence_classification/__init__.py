"""Sequence classification head: one label per text (or text pair); accuracy and macro-F1."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from adapt import AdaptError, PluginInfo, Run, Table, hookimpl, label_config, load_task_model, task_head_modules
from adapt_sequence_classification.labels import label_names, label_to_id
from adapt_sequence_classification.metrics import ClassificationMetrics

NAME = "sequence-classification"


class SequenceClassificationTable(Table):
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    #: Normally read from the data (ClassLabel names, or the distinct label values).
    num_labels: int | None = Field(default=None, ge=2)


def encode_batch(examples: dict[str, list], *, tokenizer, text, pair, label, mapping, max_length) -> dict[str, Any]:
    features = tokenizer(examples[text], examples[pair] if pair else None, truncation=True, max_length=max_length)
    features["labels"] = [mapping[value] for value in examples[label]] if mapping else examples[label]
    return features


def check_columns(dataset, table: SequenceClassificationTable) -> None:
    columns = {"text_column": table.text_column, "label_column": table.label_column}
    if table.text_pair_column:
        columns["text_pair_column"] = table.text_pair_column
    for split, data in dataset.items():
        for key, column in columns.items():
            if column not in data.column_names:
                raise AdaptError(
                    f"task.{key}: the {split} split has no column '{column}'; "
                    f"its columns are: {', '.join(data.column_names)}"
                )


class SequenceClassification:
    """Registered per run (a class entry point), so the label list is this run's."""

    def __init__(self) -> None:
        self.labels: list[str] = []

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
            self.labels = label_names(run.dataset, table.label_column, table.num_labels)
        return self.labels

    @hookimpl
    def adapt_encode(self, run: Run, dataset) -> Any:
        table: SequenceClassificationTable = run.table(NAME)
        labels = self._resolve_labels(run)
        return dataset.map(
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
