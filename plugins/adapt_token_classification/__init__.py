"""Token classification head (NER, POS): one tag per word, aligned to sub-word tokens.

Only the first sub-token of each word carries the word's tag; the others, and special tokens, carry
-100 and are ignored by the loss and the metrics. Metrics are entity-level precision, recall and F1 in
the CoNLL sense (seqeval), plus token accuracy over labelled positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt import (
    DataError,
    PluginInfo,
    Run,
    Table,
    encode_splits,
    example_logits,
    first_split,
    hookimpl,
    label_config,
    load_head_state,
    load_task_model,
    require_columns,
    row_values,
    save_head_state,
    task_head_modules,
)
from adapt_token_classification.align import IGNORED, encode_words
from adapt_token_classification.metrics import EntityMetrics

NAME = "token-classification"


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
    for split in [dataset["train"]] if "train" in dataset else dataset.values():
        for row in split[column]:
            tags.update(row)
    if not all(isinstance(t, str) for t in tags):
        raise DataError(f"task.tags_column: column '{column}' must hold lists of tag names or ClassLabel ids")
    return sorted(tags)


def check_rows(dataset, table: TokenClassificationTable, tags: list[str], mapping: dict[str, int] | None) -> None:
    """One tag per word, and every tag one of the run's (the training data's); else name the row."""
    known = set(mapping) if mapping is not None else set(range(len(tags)))
    for name, split in dataset.items():
        words, labels = split[table.tokens_column], split[table.tags_column]
        for row, (w, t) in enumerate(zip(words, labels, strict=True), start=1):
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


class TokenClassification:
    """Registered per run: it keeps this run's tag list."""

    def __init__(self) -> None:
        self.tags: list[str] = []

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(kind="head", table=TokenClassificationTable, summary="one tag per word; entity P/R/F1")

    def _resolve_tags(self, run: Run) -> list[str]:
        if not self.tags:
            self._check_columns(run.dataset, run.table(TokenClassificationTable))
            self.tags = tag_names(run.dataset, run.table(TokenClassificationTable).tags_column)
        return self.tags

    @staticmethod
    def _check_columns(dataset, table: TokenClassificationTable) -> None:
        require_columns(dataset, {"tokens_column": table.tokens_column, "tags_column": table.tags_column})

    @hookimpl
    def adapt_head_modules(self, run: Run) -> list[str]:
        from transformers import AutoModelForTokenClassification

        return task_head_modules(run, AutoModelForTokenClassification, **label_config(self._resolve_tags(run)))

    @hookimpl
    def adapt_load_model(self, run: Run, load_kwargs: dict[str, Any]):
        from transformers import AutoModelForTokenClassification

        tags = label_config(self._resolve_tags(run))
        return load_task_model(run, AutoModelForTokenClassification, load_kwargs, "TOKEN_CLS", **tags)

    @hookimpl
    def adapt_encode(self, run: Run, dataset) -> Any:
        table = run.table(TokenClassificationTable)
        self._check_columns(dataset, table)
        tags = self._resolve_tags(run)
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

    @hookimpl
    def adapt_make_collator(self, run: Run):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(run.tokenizer)

    @hookimpl
    def adapt_make_metrics(self, run: Run) -> EntityMetrics:
        return EntityMetrics(self._resolve_tags(run))

    @hookimpl
    def adapt_save_artifacts(self, directory: Path) -> None:
        save_head_state(directory, {"tags": self.tags})

    @hookimpl
    def adapt_restore_state(self, directory: Path) -> None:
        self.tags = load_head_state(directory, NAME)["tags"]

    @hookimpl
    def adapt_predict(self, run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A tag per word (texts are split on whitespace) and the entities those tags spell."""
        import torch
        from seqeval.metrics.sequence_labeling import get_entities

        table = run.table(TokenClassificationTable)
        given = row_values(rows, table.tokens_column, "task.tokens_column")
        words = [w.split() if isinstance(w, str) else list(w) for w in given]
        dummy = [[self.tags[0]] * len(w) for w in words]  # alignment needs tags; only the positions matter
        features = encode_words(
            {"words": words, "tags": dummy},
            tokenizer=run.tokenizer,
            words="words",
            tags="tags",
            mapping={self.tags[0]: 0},
            max_length=run.recipe.data.max_length,
        )
        encoded = [{name: features[name][i] for name in features} for i in range(len(words))]
        outputs = example_logits(run, encoded, self.adapt_make_collator(run))
        results = []
        for example, logits, sentence in zip(encoded, outputs, words, strict=True):
            first_tokens = torch.tensor(example["labels"]) != IGNORED
            tags = [self.tags[t] for t in logits.argmax(-1)[first_tokens].tolist()]
            tags += ["O"] * (len(sentence) - len(tags))  # words cut off by data.max_length
            entities = [
                {"text": " ".join(sentence[start : end + 1]), "type": kind, "start": start, "end": end + 1}
                for kind, start, end in get_entities(tags)
            ]
            results.append({"words": sentence, "tags": tags, "entities": entities})
        return results
