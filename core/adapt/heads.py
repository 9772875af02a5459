"""Helpers that heads share: their state file and turning prediction rows into model features."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapt.errors import AdaptError
from adapt.io import atomic_write_json
from adapt.types import Table


class TextInputs(Table):
    """Recipe keys of a head that reads one text per example, or a pair of texts (subclass it)."""

    text_column: str = "text"
    """The column holding each example's text."""
    text_pair_column: str | None = None
    """A second text column, for tasks on pairs of texts (entailment, paraphrase)."""

    def input_columns(self) -> dict[str, str]:
        """{recipe key: column name} of the texts, for `require_columns`."""
        columns = {"text_column": self.text_column}
        if self.text_pair_column:
            columns["text_pair_column"] = self.text_pair_column
        return columns


def tokenize_texts(examples: dict[str, list], *, tokenizer: Any, text: str, pair: str | None, max_length: int):
    """A batch of rows' texts (and pairs), truncated, unpadded: the collator pads each batch."""
    return tokenizer(examples[text], examples[pair] if pair else None, truncation=True, max_length=max_length)


def save_head_state(directory: Path, state: dict[str, Any], name: str = "labels.json") -> None:
    """Write what a head needs to be restored without its training data (label names...), atomically."""
    atomic_write_json(directory / name, state)


def load_head_state(directory: Path, head: str, name: str = "labels.json") -> dict[str, Any]:
    path = directory / name
    if not path.is_file():
        raise AdaptError(
            f"{path}: missing; head '{head}' writes it when its run finishes, so this run was not written by "
            "`adapt run` with this head, or did not finish"
        )
    return json.loads(path.read_text())


def row_values(rows: list[dict[str, Any]], column: str, key: str) -> list[Any]:
    """Column `column` of each row; a row without it may give its input as "text" (command-line texts)."""
    values = []
    for number, row in enumerate(rows, 1):
        if column in row:
            values.append(row[column])
        elif "text" in row:
            values.append(row["text"])
        else:
            raise AdaptError(
                f"{key}: row {number} has no column '{column}' (nor 'text'); its columns are: {', '.join(row)}"
            )
    return values


def encode_texts(run: Any, rows: list[dict[str, Any]], table: TextInputs) -> tuple[list[str], list[dict[str, Any]]]:
    """(texts, one tokenised feature dict per row) for `adapt_predict` of a head with `TextInputs`."""
    pair_column = table.text_pair_column
    texts = row_values(rows, table.text_column, "task.text_column")
    pairs = None
    if pair_column:
        pairs = [row.get(pair_column) for row in rows]
        if any(p is None for p in pairs):
            raise AdaptError(f"task.text_pair_column: every row needs a '{pair_column}' column for this run")
    encoded = run.tokenizer(texts, pairs, truncation=True, max_length=run.recipe.data.max_length)
    features = [{name: encoded[name][i] for name in encoded} for i in range(len(texts))]
    return texts, features


def first_split(dataset: Any) -> Any:
    """The training split, or the eval split when a restored run loaded only that."""
    return dataset["train"] if "train" in dataset else dataset["eval"]


def encode_splits(dataset: Any, function: Any, **options: Any) -> Any:
    """`function(batch_of_rows, **options)` over every split, batched, keeping only the columns it returns."""
    return dataset.map(
        function, batched=True, remove_columns=first_split(dataset).column_names, fn_kwargs=options, desc="tokenising"
    )
