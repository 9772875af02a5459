"""What heads share: `Head`, the base class of the classification-like heads, and the helpers it is built on."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from adapt.errors import AdaptError
from adapt.hookspecs import hookimpl
from adapt.io import atomic_write_json
from adapt.types import PluginInfo, Table

if TYPE_CHECKING:
    from adapt.run.context import Run
    from adapt.types import Metrics


#: The feature key that says which row a feature belongs to, where `Head.prediction_inputs` makes several features of
#: one row (the windows of a long context): `format` then gets that row's prediction rows and features as lists.
WINDOW_OF = "example_row"


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


class FirstTokenInputs(TextInputs):
    """The keys of a head whose classifier reads only the first token's last hidden state (a BERT-style sequence
    classifier's pooler), with `Head.reads_first_token = True`."""

    trim_top_block: bool = True
    """The top block computes only the first token's row, the one the classifier reads (BERT, RoBERTa, XLM-R,
    CamemBERT and ELECTRA sequence classifiers): the same outputs and gradients up to rounding, for about 5/6 of that
    block's work. A hook observing the top block's whole output (distill, mlm, the forgetting probe) makes it compute
    every row while the hook is there."""


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


class Head(ABC):
    """Base class of a head whose model is a transformers Auto class with a fresh output layer (sequence
    classification, token classification, multi-label, regression): it implements the head's hooks, so a
    subclass declares only what differs.

    Declare as class attributes `table` (the recipe's [task] table, a `TextInputs` subclass for text inputs),
    `summary`, `auto_class` (the name of a transformers Auto class), `task_type` (PEFT's name for the task) and,
    when it is not labels.json with a "labels" list, `state_file` and `state_key` (and `requires_api`). Implement:

    - `resolve_names(run)`: the names of the model's outputs in id order (classes, tags, targets), from the data
      or the recipe; called once per run, the result is `self.names`;
    - `encode(run, dataset)`: the raw splits as features (usually `adapt.encode_splits` with a batch function);
    - `make_metrics(run)`: an `adapt.Metrics`;
    - `format(run, given, logits, features)`: one prediction row from the row's input, its logits and features.

    Override `config` (the model config's extra keys), `collator`, `prediction_inputs` (rows -> inputs and
    features, for inputs other than `TextInputs`' texts), `state`/`restore` (more than the names) as needed. The
    base implements `adapt_plugin_info`, `adapt_head_modules`, `adapt_load_model`, `adapt_encode`,
    `adapt_make_collator`, `adapt_make_metrics`, `adapt_prediction_tensor`, `adapt_save_artifacts`,
    `adapt_restore_state` and `adapt_predict`. Register the subclass itself as the entry point: one instance per
    run keeps its names.
    """

    table: ClassVar[type[Table]] = TextInputs
    summary: ClassVar[str] = ""
    requires_api: ClassVar[str | None] = None
    auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    task_type: ClassVar[str] = "SEQ_CLS"
    state_file: ClassVar[str] = "labels.json"
    state_key: ClassVar[str] = "labels"
    #: The head's classifier reads only the first token's last hidden state, so the top block may compute that row
    #: alone (`adapt.trim_top_block`, where the model is a BERT-style sequence classifier): declare it with a
    #: `FirstTokenInputs` table, whose `trim_top_block` key turns it off.
    reads_first_token: ClassVar[bool] = False

    def __init__(self) -> None:
        self.names: list[str] = []

    # --- what a subclass declares (abstract: a subclass missing one is listed as a broken plugin) -------------

    @abstractmethod
    def resolve_names(self, run: Run) -> list[str]: ...

    @abstractmethod
    def encode(self, run: Run, dataset: Any) -> Any: ...

    @abstractmethod
    def make_metrics(self, run: Run) -> Metrics: ...

    @abstractmethod
    def format(self, run: Run, given: Any, logits: Any, features: dict[str, Any]) -> dict[str, Any]: ...

    def config(self, run: Run, names: list[str]) -> dict[str, Any]:
        """`from_pretrained` keyword arguments for the model's config: by default the names as its labels."""
        from adapt.model.modeling import label_config

        return label_config(names)

    def collator(self, run: Run) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(run.tokenizer)  # pads each batch to its own longest example

    def prediction_inputs(self, run: Run, rows: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]]]:
        """(each row's input as shown in its prediction, each row's features): the rows' texts, tokenised."""
        return encode_texts(run, rows, run.table(self.table))

    def prediction_tensor(self, outputs: Any) -> Any:
        """The outputs' tensor that stands for the prediction, batch first (`format` gets each example's row of it,
        and `adapt export --merge` compares it): `outputs.logits` by default."""
        return outputs.logits

    def state(self, run: Run) -> dict[str, Any]:
        """What restores the head without its training data (written to `state_file`)."""
        return {self.state_key: self.names}

    def restore(self, state: dict[str, Any]) -> None:
        self.names = list(state[self.state_key])

    # --- the hooks ------------------------------------------------------------------------------------------

    def output_names(self, run: Run) -> list[str]:
        """`self.names`, resolved on first use."""
        if not self.names:
            self.names = self.resolve_names(run)
        return self.names

    def _auto(self) -> Any:
        import transformers

        return getattr(transformers, self.auto_class)

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(kind="head", table=self.table, summary=self.summary, requires_api=self.requires_api)

    @hookimpl
    def adapt_head_modules(self, run: Run) -> list[str]:
        from adapt.model.modeling import task_head_modules

        return task_head_modules(run, self._auto(), **self.config(run, self.output_names(run)))

    @hookimpl
    def adapt_load_model(self, run: Run, load_kwargs: dict[str, Any]) -> Any:
        from adapt.model.modeling import load_task_model

        config = self.config(run, self.output_names(run))
        model = load_task_model(run, self._auto(), load_kwargs, self.task_type, **config)
        wanted = getattr(run.table(self.table), "trim_top_block", True)
        old_key = run.recipe.model.trim_top_block  # deprecated [model] key: false in an older recipe still counts
        if self.reads_first_token and wanted and old_key is not False:
            from adapt.speed.trim import trim_top_block

            trim_top_block(model)
        return model

    @hookimpl
    def adapt_encode(self, run: Run, dataset: Any) -> Any:
        return self.encode(run, dataset)

    @hookimpl
    def adapt_make_collator(self, run: Run) -> Any:
        return self.collator(run)

    @hookimpl
    def adapt_make_metrics(self, run: Run) -> Metrics:
        return self.make_metrics(run)

    @hookimpl
    def adapt_prediction_tensor(self, outputs: Any) -> Any:
        return self.prediction_tensor(outputs)

    @hookimpl
    def adapt_save_artifacts(self, run: Run, directory: Path) -> None:
        save_head_state(directory, self.state(run), self.state_file)

    @hookimpl
    def adapt_restore_state(self, run: Run, directory: Path) -> None:
        self.restore(load_head_state(directory, run.recipe.head, self.state_file))

    @hookimpl
    def adapt_predict(self, run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from adapt.model.inference import example_logits

        inputs, features = self.prediction_inputs(run, rows)
        outputs = example_logits(run, features, self.collator(run), self.prediction_tensor)
        if features and WINDOW_OF in features[0]:  # several features per row (windows): format gets them all
            windows: list[list[int]] = [[] for _ in inputs]
            for position, feature in enumerate(features):
                windows[feature[WINDOW_OF]].append(position)
            return [
                self.format(run, given, [outputs[i] for i in found], [features[i] for i in found])
                for given, found in zip(inputs, windows, strict=True)
            ]
        return [
            self.format(run, given, logits, example)
            for given, logits, example in zip(inputs, outputs, features, strict=True)
        ]
