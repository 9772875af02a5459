"""Sequence classification head: one label per text (or text pair); accuracy and macro-F1."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

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
from adapt_sequence_classification.labels import check_known_labels, class_weights, label_names, label_to_id
from adapt_sequence_classification.metrics import ClassificationMetrics


class SequenceClassificationTable(FirstTokenInputs):
    label_column: str = "label"
    """The column holding each example's class: a name, or an id."""
    num_labels: int | None = Field(default=None, ge=2)
    """Normally read from the data (ClassLabel names, or the distinct label values)."""
    label_names: list[str] | None = None
    """Names for the classes in id order (for integer labels), or the id order of string labels."""
    class_weights: list[float] | Literal["balanced"] | None = None
    """Loss weight per class, or "balanced" (inverse class frequency in the training split)."""

    @field_validator("label_names")
    @classmethod
    def _one_name_per_class(cls, names: list[str] | None) -> list[str] | None:
        repeated = sorted({n for n in names or [] if (names or []).count(n) > 1})
        if repeated:
            raise ValueError(f"each class needs a name of its own; repeated: {', '.join(map(repr, repeated))}")
        return names


def encode_batch(examples: dict[str, list], *, tokenizer, text, pair, label, mapping, max_length) -> dict[str, Any]:
    features = tokenize_texts(examples, tokenizer=tokenizer, text=text, pair=pair, max_length=max_length)
    features["labels"] = [_label_id(mapping, value) for value in examples[label]] if mapping else examples[label]
    return features


def _label_id(mapping: dict[str, int], value: str) -> int:
    if value not in mapping:
        raise DataError(f"task.label_column: label {value!r} is not one of the run's labels ({', '.join(mapping)})")
    return mapping[value]


def check_columns(dataset, table: SequenceClassificationTable) -> None:
    columns = {**table.input_columns(), "label_column": table.label_column}
    require_columns(dataset, columns)


class SequenceClassification(Head):
    """Registered per run (a class entry point), so the label list is this run's."""

    table = SequenceClassificationTable

    reads_first_token = True  # its classifier reads the [CLS] row only
    summary = "one label per text; accuracy, macro-F1"

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[float] | None = None
        self.weight_tensor = None

    def resolve_names(self, run: Run) -> list[str]:
        """Check the recipe's columns against the data, then read the label names."""
        table = run.table(SequenceClassificationTable)
        if run.dataset is None and run.planning:  # planning without the data: the recipe's classes
            return table.label_names or [str(i) for i in range(table.num_labels or 2)]
        check_columns(run.dataset, table)
        return label_names(run.dataset, table.label_column, table.num_labels, table.label_names)

    def encode(self, run: Run, dataset) -> Any:
        table = run.table(SequenceClassificationTable)
        check_columns(dataset, table)
        labels = self.output_names(run)
        mapping = label_to_id(first_split(dataset), table.label_column, labels)
        check_known_labels(dataset, table.label_column, labels, mapping)
        encoded = encode_splits(
            dataset,
            encode_batch,
            tokenizer=run.tokenizer,
            text=table.text_column,
            pair=table.text_pair_column,
            label=table.label_column,
            mapping=mapping,
            max_length=run.recipe.data.max_length,
        )
        if "train" in encoded:
            self.weights = class_weights(encoded["train"], labels, table.class_weights)
        return encoded

    def make_metrics(self, run: Run) -> ClassificationMetrics:
        return ClassificationMetrics(len(self.output_names(run)))

    def format(self, run: Run, given: Any, logits: Any, features: dict[str, Any]) -> dict[str, Any]:
        """The top label with its probability, and the probability of every label."""
        probs = logits.softmax(-1).tolist()
        top = max(range(len(probs)), key=probs.__getitem__)
        scores = dict(zip(self.names, probs, strict=True))
        return {"text": given, "label": self.names[top], "score": probs[top], "scores": scores}

    def state(self, run: Run) -> dict[str, Any]:
        return {"labels": self.names, "class_weights": self.weights}

    def restore(self, state: dict[str, Any]) -> None:
        self.names, self.weights = list(state["labels"]), state.get("class_weights")

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
