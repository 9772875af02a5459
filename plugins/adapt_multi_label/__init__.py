"""Multi-label head: any number of labels per text, each a sigmoid; BCE loss; micro/macro F1 at a threshold.

Labels come from one column holding each row's labels (a list of names or of ids), or from one 0/1
column per label. The threshold is the recipe's (`adapt eval|predict --set task.threshold=...` tries another).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from adapt import (
    DataError,
    FirstTokenInputs,
    Head,
    Run,
    encode_splits,
    first_split,
    require_columns,
    tokenize_texts,
)
from adapt_multi_label.metrics import MultiLabelMetrics


class MultiLabelTable(FirstTokenInputs):
    label_column: str | None = None
    """A column holding each row's labels, as a list of names or of integer ids ..."""
    label_columns: list[str] | None = Field(default=None, min_length=1)
    """... or one 0/1 column per label, named after the label."""
    label_names: list[str] | None = None
    """Names for integer ids (in id order); normally read from the data."""
    threshold: float = Field(default=0.5, gt=0, lt=1)
    """A label is predicted when its sigmoid exceeds this."""

    @model_validator(mode="after")
    def _one_source(self) -> MultiLabelTable:
        if (self.label_column is None) == (self.label_columns is None):
            raise ValueError("set either 'label_column' (a list of labels per row) or 'label_columns' (0/1 columns)")
        return self


def label_names(dataset, table: MultiLabelTable) -> list[str]:
    """Label names in id order: the 0/1 columns, ClassLabel names, the recipe's names, or the distinct values."""
    if table.label_columns:
        return list(table.label_columns)
    feature = getattr(first_split(dataset).features[table.label_column], "feature", None)
    if getattr(feature, "names", None):
        return list(feature.names)
    values: set = set()  # the training data's labels: one only in the eval data is an error when encoding
    for split in [dataset["train"]] if "train" in dataset else dataset.values():
        for row in split[table.label_column]:
            if not isinstance(row, list):
                raise DataError(f"task.label_column: column '{table.label_column}' must hold a list of labels per row")
            values.update(row)
    if all(isinstance(v, str) for v in values):
        return table.label_names or sorted(values)
    if all(isinstance(v, int) for v in values):
        count = max(values, default=-1) + 1
        names = table.label_names or [str(i) for i in range(count)]
        if len(names) < count:
            raise DataError(f"task.label_names: {len(names)} names given, but the data holds ids up to {count - 1}")
        return names
    raise DataError(f"task.label_column: column '{table.label_column}' must hold lists of names or of integer ids")


def holds_ids(dataset, column: str) -> bool:
    """Whether a list column holds integer ids (or ClassLabel ids) rather than names."""
    feature = getattr(first_split(dataset).features[column], "feature", None)
    return getattr(feature, "names", None) is not None or str(getattr(feature, "dtype", "")).startswith("int")


def encode_batch(examples: dict[str, list], *, tokenizer, text, pair, column, columns, index, max_length):
    features = tokenize_texts(examples, tokenizer=tokenizer, text=text, pair=pair, max_length=max_length)
    size = len(index)
    if columns:
        features["labels"] = [[float(v) for v in row] for row in zip(*(examples[c] for c in columns), strict=True)]
        return features
    features["labels"] = []
    for row in examples[column]:
        hot = [0.0] * size
        for value in row:
            if value not in index:
                raise DataError(
                    f"task.label_column: label {value!r} is not one of the run's labels (those of the training "
                    f"data): {', '.join(map(str, index))}"
                )
            hot[index[value]] = 1.0
        features["labels"].append(hot)
    return features


class MultiLabel(Head):
    table = MultiLabelTable
    reads_first_token = True  # its classifier reads the [CLS] row only
    summary = "several labels per text; micro/macro F1"

    def resolve_names(self, run: Run) -> list[str]:
        table = run.table(MultiLabelTable)
        self._check_columns(run.dataset, table)
        return label_names(run.dataset, table)

    @staticmethod
    def _check_columns(dataset, table: MultiLabelTable) -> None:
        columns = table.input_columns()
        if table.label_column:
            columns["label_column"] = table.label_column
        for i, column in enumerate(table.label_columns or []):
            columns[f"label_columns[{i}]"] = column
        require_columns(dataset, columns)

    def config(self, run: Run, names: list[str]) -> dict[str, Any]:
        return {**super().config(run, names), "problem_type": "multi_label_classification"}

    def encode(self, run: Run, dataset) -> Any:
        table = run.table(MultiLabelTable)
        self._check_columns(dataset, table)
        labels = self.output_names(run)
        by_id = table.label_column is not None and holds_ids(dataset, table.label_column)
        index = {i: i for i in range(len(labels))} if by_id else {name: i for i, name in enumerate(labels)}
        return encode_splits(
            dataset,
            encode_batch,
            tokenizer=run.tokenizer,
            text=table.text_column,
            pair=table.text_pair_column,
            column=table.label_column,
            columns=table.label_columns,
            index=index,
            max_length=run.recipe.data.max_length,
        )

    def make_metrics(self, run: Run) -> MultiLabelMetrics:
        return MultiLabelMetrics(len(self.output_names(run)), run.table(MultiLabelTable).threshold)

    def state(self, run: Run) -> dict[str, Any]:
        return {"labels": self.names, "threshold": run.table(MultiLabelTable).threshold}

    def format(self, run: Run, given: Any, logits: Any, features: dict[str, Any]) -> dict[str, Any]:
        """The labels whose probability exceeds the threshold, and every label's probability."""
        scores = dict(zip(self.names, logits.sigmoid().tolist(), strict=True))
        chosen = [name for name, p in scores.items() if p > run.table(MultiLabelTable).threshold]
        return {"text": given, "labels": chosen, "scores": scores}
