"""Token classification head (NER, POS): one tag per word, aligned to sub-word tokens.

Only the first sub-token of each word carries the word's tag; the others, and special tokens, carry
-100 and are ignored by the loss and the metrics. Metrics are entity-level precision, recall and F1 in
the CoNLL sense (seqeval), plus token accuracy over labelled positions.
"""

from __future__ import annotations

from typing import Any

from adapt import (
    AdaptError,
    PluginInfo,
    Run,
    Table,
    hookimpl,
    label_config,
    load_task_model,
    require_columns,
    task_head_modules,
)
from adapt_token_classification.align import encode_words
from adapt_token_classification.metrics import EntityMetrics

NAME = "token-classification"


class TokenClassificationTable(Table):
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"


def tag_names(dataset, column: str) -> list[str]:
    """Tag names in id order: the ClassLabel names of a Sequence(ClassLabel) column, else the sorted
    distinct string tags of all splits."""
    feature = getattr(dataset["train"].features[column], "feature", None)
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    tags: set = set()
    for split in dataset.values():
        for row in split[column]:
            tags.update(row)
    if not all(isinstance(t, str) for t in tags):
        raise AdaptError(f"task.tags_column: column '{column}' must hold lists of tag names or ClassLabel ids")
    return sorted(tags)


class TokenClassification:
    """Registered per run: it keeps this run's tag list."""

    def __init__(self) -> None:
        self.tags: list[str] = []

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(kind="head", table=TokenClassificationTable, summary="one tag per word; entity P/R/F1")

    def _resolve_tags(self, run: Run) -> list[str]:
        if not self.tags:
            table: TokenClassificationTable = run.table(NAME)
            require_columns(run.dataset, {"tokens_column": table.tokens_column, "tags_column": table.tags_column})
            self.tags = tag_names(run.dataset, table.tags_column)
        return self.tags

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
        table: TokenClassificationTable = run.table(NAME)
        tags = self._resolve_tags(run)
        feature = getattr(dataset["train"].features[table.tags_column], "feature", None)
        mapping = None if getattr(feature, "names", None) else {t: i for i, t in enumerate(tags)}
        return dataset.map(
            encode_words,
            batched=True,
            remove_columns=dataset["train"].column_names,
            fn_kwargs={
                "tokenizer": run.tokenizer,
                "words": table.tokens_column,
                "tags": table.tags_column,
                "mapping": mapping,
                "max_length": run.recipe.data.max_length,
            },
            desc="tokenising",
        )

    @hookimpl
    def adapt_make_collator(self, run: Run):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(run.tokenizer)

    @hookimpl
    def adapt_make_metrics(self, run: Run) -> EntityMetrics:
        return EntityMetrics(self._resolve_tags(run))
