"""Extractive question answering (SQuAD-style): the answer is a span of the context, found by a start and an end
logit per token.

Contexts longer than the model's window are read as overlapping windows (`doc_stride` tokens of overlap); each
window is trained on the answer's tokens when it holds the whole answer, else on the no-answer position. At
evaluation and prediction every window of a question offers its n best spans; the best of them, mapped back to
characters through the tokenizer's offsets, is the answer, unless (with `allow_no_answer`) the no-answer score
wins by more than `null_score_threshold`. Metrics are SQuAD's exact match and F1 over questions.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from adapt import WINDOW_OF, DataError, Head, RecipeError, Run, Table
from adapt_extractive_qa.metrics import QuestionAnsweringMetrics
from adapt_extractive_qa.questions import canonical_questions
from adapt_extractive_qa.spans import Span, better, choose, read_window
from adapt_extractive_qa.windows import CHAR_END, CHAR_START, encode_windows


class QuestionAnsweringTable(Table):
    question_column: str = "question"
    """The column holding each question."""
    context_column: str = "context"
    """The column holding the text the answer is taken from."""
    answers_column: str = "answers"
    """The column holding the answers in SQuAD's form, {"text": [...], "answer_start": [...]} (character offsets
    into the context; empty lists: no answer), or the answer's text when `answer_start_column` is set. A
    SQuAD-format JSON file (`data` > `paragraphs` > `qas`) is read as it is."""
    answer_start_column: str | None = None
    """A column of each answer's start character, beside `answers_column` holding its text (null or "": none)."""
    doc_stride: int = Field(default=64, ge=0)
    """Tokens of overlap between a long context's consecutive windows (each window is data.max_length tokens:
    the question, then as much of the context as fits)."""
    max_answer_length: int = Field(default=30, ge=1)
    """The longest answer predicted, in tokens."""
    n_best: int = Field(default=20, ge=1)
    """Start and end candidates per window that are paired into spans."""
    allow_no_answer: bool = False
    """Questions may have no answer in their context (SQuAD 2.0): such rows train the no-answer position, a
    question whose no-answer score wins predicts "", and metrics are split into has-answer / no-answer."""
    null_score_threshold: float = 0.0
    """With allow_no_answer, "no answer" when its score exceeds the best span's by more than this (raise it to
    answer more often)."""


class ExtractiveQuestionAnswering(Head):
    """Registered per run: it keeps the run's canonical questions per split."""

    table = QuestionAnsweringTable
    summary = "answer spans in long contexts; SQuAD EM/F1, unanswerable questions"
    auto_class = "AutoModelForQuestionAnswering"
    task_type = "QUESTION_ANS"
    state_file = "qa.json"
    state_key = "outputs"

    def __init__(self) -> None:
        super().__init__()
        self._questions: dict[str, Any] = {}  # split fingerprint -> its canonical questions

    def resolve_names(self, run: Run) -> list[str]:
        return ["start", "end"]

    def config(self, run: Run, names: list[str]) -> dict[str, Any]:
        return {}  # a QA model's two outputs are its architecture's, not labels

    def questions(self, run: Run, split: Any, name: str) -> Any:
        key = split._fingerprint
        if key not in self._questions:
            self._questions[key] = canonical_questions(split, name, run.table(QuestionAnsweringTable))
        return self._questions[key]

    def _window_options(self, run: Run) -> dict[str, Any]:
        if not getattr(run.tokenizer, "is_fast", False):
            raise RecipeError(
                f"head 'extractive-qa': model.name '{run.recipe.model.name}' has no fast tokenizer, and mapping "
                "answers to characters needs its offsets; use a model with a tokenizer.json"
            )
        table = run.table(QuestionAnsweringTable)
        return {"tokenizer": run.tokenizer, "max_length": run.recipe.data.max_length, "doc_stride": table.doc_stride}

    def encode(self, run: Run, dataset: Any) -> Any:
        from datasets import DatasetDict

        options = self._window_options(run)
        encoded = {}
        for name, split in dataset.items():
            questions = self.questions(run, split, name)
            encoded[name] = questions.map(
                encode_windows, batched=True, with_indices=True, remove_columns=questions.column_names,
                fn_kwargs=options, desc="windowing",
            )
        if "train" in encoded:  # only the eval's metrics read which question a window is of and its characters
            encoded["train"] = encoded["train"].remove_columns([WINDOW_OF, CHAR_START, CHAR_END])
        return DatasetDict(encoded)

    def collator(self, run: Run) -> Any:
        return WindowCollator(run.tokenizer)

    def references(self, run: Run) -> tuple[list[str], list[list[str]]]:
        """The eval questions' contexts and gold answer texts (none where a command loaded no data)."""
        if run.dataset is None or "eval" not in run.dataset:
            return [], []
        questions = self.questions(run, run.dataset["eval"], "eval")
        return questions["context"], questions["answer_texts"]

    def make_metrics(self, run: Run) -> QuestionAnsweringMetrics:
        table = run.table(QuestionAnsweringTable)
        return QuestionAnsweringMetrics(
            *self.references(run),
            allow_no_answer=table.allow_no_answer,
            null_score_threshold=table.null_score_threshold,
            n_best=table.n_best,
            max_answer_length=table.max_answer_length,
        )

    def prediction_tensor(self, outputs: Any) -> Any:
        import torch

        return torch.stack([outputs.start_logits, outputs.end_logits], dim=-1)  # (batch, tokens, 2)

    def prediction_inputs(self, run: Run, rows: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]]]:
        """Each row's question and context (the recipe's columns, else "question" and "context"), as windows."""
        table = run.table(QuestionAnsweringTable)
        pairs = []
        for number, row in enumerate(rows, 1):
            question = row.get(table.question_column, row.get("question"))
            context = row.get(table.context_column, row.get("context"))
            if not isinstance(question, str) or not isinstance(context, str):
                raise DataError(
                    f"head 'extractive-qa': row {number} needs a question ('{table.question_column}') and a context "
                    f"('{table.context_column}'); its columns are: {', '.join(row)}. On the command line: "
                    "adapt predict RUN --question Q --context C"
                )
            pairs.append((question, context))
        examples = {"question": [q for q, _ in pairs], "context": [c for _, c in pairs]}
        windows = encode_windows(examples, list(range(len(pairs))), **self._window_options(run), labelled=False)
        features = [{key: values[i] for key, values in windows.items()} for i in range(len(windows[WINDOW_OF]))]
        return pairs, features

    def format(self, run: Run, given: Any, logits: Any, features: Any) -> dict[str, Any]:
        """The answer from all of the question's windows: its text, character span [start, end) and score."""
        import torch

        table = run.table(QuestionAnsweringTable)
        question, context = given
        span: Span | None = None
        null = float("inf")
        for window, feature in zip(logits, features, strict=True):
            starts, ends = window[:, 0], window[:, 1]
            char_start, char_end = torch.tensor(feature[CHAR_START]), torch.tensor(feature[CHAR_END])
            found, window_null = read_window(
                starts, ends, char_start, char_end, n_best=table.n_best, max_answer_length=table.max_answer_length
            )
            span, null = better(span, found), min(null, window_null)
        chosen = choose(span, null, table.allow_no_answer, table.null_score_threshold)
        if chosen is None:
            return {"question": question, "answer": "", "start": None, "end": None, "score": round(null, 4)}
        return {
            "question": question,
            "answer": context[chosen.start : chosen.end],
            "start": chosen.start,
            "end": chosen.end,
            "score": round(chosen.score, 4),
        }


class WindowCollator:
    """Pads a batch of windows like `DataCollatorWithPadding`, and their character spans with -1 alike."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)
        self.left = tokenizer.padding_side == "left"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        spans = {key: [f[key] for f in features] for key in (CHAR_START, CHAR_END) if key in features[0]}
        batch = self.pad([{k: v for k, v in f.items() if k not in spans} for f in features])
        length = batch["input_ids"].shape[1]
        for key, rows in spans.items():
            fill = [[-1] * (length - len(r)) for r in rows]
            padded = [f + r if self.left else r + f for r, f in zip(rows, fill, strict=True)]
            batch[key] = torch.tensor(padded, dtype=torch.long)
        return batch


__all__ = ["ExtractiveQuestionAnswering", "QuestionAnsweringTable"]
