"""Token classification head (NER, POS): one tag per word, aligned to sub-word tokens.

Only the first sub-token of each word carries the word's tag; the others, and special tokens, carry
-100 and are ignored by the loss and the metrics. Metrics are entity-level precision, recall and F1 in
the CoNLL sense (seqeval), plus token accuracy over labelled positions.
"""

from __future__ import annotations

from typing import Any

from adapt import (
    DataError,
    Head,
    Run,
    Table,
    encode_splits,
    first_split,
    require_columns,
    row_values,
)
from adapt_token_classification.align import IGNORED, encode_words
from adapt_token_classification.metrics import EntityMetrics


class TokenClassificationTable(Table):
    tokens_column: str = "tokens"
    """The column holding each example's words (a list of strings)."""
    tags_column: str = "ner_tags"
    """The column holding one tag per word (names such as B-PER, or ClassLabel ids)."""


def tag_names(dataset, column: str) -> list[str]:
    """Tag names in id order: the ClassLabel names of a Sequence(ClassLabel) column, else the sorted
    distinct string tags of the training split (a tag only in the eval data is an error: `check_rows`)."""
    feature = getattr(first_split(dataset).features[column], "feature", None)
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    tags: set = set()
    for name, split in dataset.items() if "train" not in dataset else [("train", dataset["train"])]:
        for row, value in enumerate(split[column], start=1):
            _refuse_null("task.tags_column", column, name, row, value)
            tags.update(value)
    if not all(isinstance(t, str) for t in tags):
        raise DataError(f"task.tags_column: column '{column}' must hold lists of tag names or ClassLabel ids")
    return sorted(tags)


def _refuse_null(key: str, column: str, split: str, row: int, value: Any) -> None:
    """A row's tokens or tags must be a list without nulls: a JSON `null` there is bad data, named by row."""
    if value is None:
        raise DataError(f"{key}: row {row} of the {split} split has no '{column}' (null); give a list")
    position = next((i for i, item in enumerate(value) if item is None), None)
    if position is not None:
        raise DataError(f"{key}: row {row} of the {split} split has a null at position {position} of '{column}'")


def check_rows(dataset, table: TokenClassificationTable, tags: list[str], mapping: dict[str, int] | None) -> None:
    """One tag per word, and every tag one of the run's (the training data's); else name the row."""
    known = set(mapping) if mapping is not None else set(range(len(tags)))
    for name, split in dataset.items():
        words, labels = split[table.tokens_column], split[table.tags_column]
        for row, (w, t) in enumerate(zip(words, labels, strict=True), start=1):
            _refuse_null("task.tokens_column", table.tokens_column, name, row, w)
            _refuse_null("task.tags_column", table.tags_column, name, row, t)
            if len(w) != len(t):
                raise DataError(
                    f"task.tags_column: row {row} of the {name} split has {len(w)} tokens but {len(t)} tags; "
                    "give one tag per token"
                )
            unknown = next((tag for tag in t if tag not in known), None)
            if unknown is not None:
                raise DataError(
                    f"task.tags_column: the {name} split has tag '{unknown}' in row {row}, which is not one of the "
                    f"run's tags (those of the training data): {', '.join(tags)}"
                )


class TokenClassification(Head):
    """Registered per run: it keeps this run's tag list."""

    table = TokenClassificationTable
    summary = "one tag per word; entity P/R/F1"
    auto_class = "AutoModelForTokenClassification"
    task_type = "TOKEN_CLS"
    state_key = "tags"

    def resolve_names(self, run: Run) -> list[str]:
        table = run.table(TokenClassificationTable)
        self._check_columns(run.dataset, table)
        return tag_names(run.dataset, table.tags_column)

    @staticmethod
    def _check_columns(dataset, table: TokenClassificationTable) -> None:
        require_columns(dataset, {"tokens_column": table.tokens_column, "tags_column": table.tags_column})

    def encode(self, run: Run, dataset) -> Any:
        table = run.table(TokenClassificationTable)
        self._check_columns(dataset, table)
        tags = self.output_names(run)
        feature = getattr(first_split(dataset).features[table.tags_column], "feature", None)
        mapping = None if getattr(feature, "names", None) else {t: i for i, t in enumerate(tags)}
        check_rows(dataset, table, tags, mapping)
        return encode_splits(
            dataset,
            encode_words,
            tokenizer=run.tokenizer,
            words=table.tokens_column,
            tags=table.tags_column,
            mapping=mapping,
            max_length=run.recipe.data.max_length,
        )

    def collator(self, run: Run) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(run.tokenizer)

    def make_metrics(self, run: Run) -> EntityMetrics:
        return EntityMetrics(self.output_names(run))

    def prediction_inputs(self, run: Run, rows: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]]]:
        """Each row's words (a text is split on whitespace), tokenised with its first sub-tokens marked."""
        table = run.table(TokenClassificationTable)
        given = row_values(rows, table.tokens_column, "task.tokens_column")
        words = [w.split() if isinstance(w, str) else list(w) for w in given]
        dummy = [[self.names[0]] * len(w) for w in words]  # alignment needs tags; only the positions matter
        features = encode_words(
            {"words": words, "tags": dummy},
            tokenizer=run.tokenizer,
            words="words",
            tags="tags",
            mapping={self.names[0]: 0},
            max_length=run.recipe.data.max_length,
        )
        return words, [{name: features[name][i] for name in features} for i in range(len(words))]

    def format(self, run: Run, given: Any, logits: Any, features: dict[str, Any]) -> dict[str, Any]:
        """A tag per word and the entities those tags spell."""
        import torch
        from seqeval.metrics.sequence_labeling import get_entities

        first_tokens = torch.tensor(features["labels"]) != IGNORED
        tags = [self.names[t] for t in logits.argmax(-1)[first_tokens].tolist()]
        tags += ["O"] * (len(given) - len(tags))  # words cut off by data.max_length
        entities = [
            {"text": " ".join(given[start : end + 1]), "type": kind, "start": start, "end": end + 1}
            for kind, start, end in get_entities(tags)
        ]
        return {"words": given, "tags": tags, "entities": entities}
