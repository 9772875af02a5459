"""SQuAD's exact match and F1 (the official evaluation script's normalisation: lower case, no punctuation, no
articles, single spaces), per question over all of its windows, split into has-answer / no-answer questions when
the run allows unanswerable ones. Values are fractions (0.9, not 90)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from adapt import WINDOW_OF
from adapt_extractive_qa.spans import Span, better, choose, read_window
from adapt_extractive_qa.windows import CHAR_END, CHAR_START

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not wanted:  # no answer: right only when both are empty
        return float(predicted == wanted)
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def best_of(score: Callable[[str, str], float], prediction: str, golds: list[str]) -> float:
    """A question's score against the best-matching of its gold answers ("" for an unanswerable question)."""
    return max(score(prediction, gold) for gold in golds or [""])


class QuestionAnsweringMetrics:
    """Collects each window's best span and null score per question (windows of one question may fall in different
    batches, or processes), then answers each question and scores it against its gold answers.

    `contexts` and `golds` (gold answer texts, [] for none) are the eval rows': they travel with the object when
    processes merge (the core merges into the first process's pickled copy), a few MB for SQuAD's dev set."""

    def __init__(
        self,
        contexts: list[str],
        golds: list[list[str]],
        *,
        allow_no_answer: bool,
        null_score_threshold: float,
        n_best: int,
        max_answer_length: int,
    ) -> None:
        self.contexts, self.golds = contexts, golds
        self.allow_no_answer = allow_no_answer
        self.threshold = null_score_threshold
        self.n_best, self.max_answer_length = n_best, max_answer_length
        self.spans: dict[int, Span | None] = {}
        self.nulls: dict[int, float] = {}

    def names(self) -> list[str]:
        split = ["has_answer_exact_match", "has_answer_f1", "no_answer_accuracy"] if self.allow_no_answer else []
        return ["exact_match", "f1", *split]

    def update(self, outputs: Any, batch: Mapping[str, Any]) -> None:
        starts, ends = outputs.start_logits.cpu(), outputs.end_logits.cpu()
        char_start, char_end = batch[CHAR_START].cpu(), batch[CHAR_END].cpu()
        for window, row in enumerate(batch[WINDOW_OF].tolist()):
            span, null = read_window(
                starts[window], ends[window], char_start[window], char_end[window],
                n_best=self.n_best, max_answer_length=self.max_answer_length,
            )
            self._add(row, span, null)

    def _add(self, row: int, span: Span | None, null: float) -> None:
        self.spans[row] = better(self.spans.get(row), span)
        self.nulls[row] = min(self.nulls.get(row, null), null)  # the window most sure that an answer is there

    def merge(self, other: QuestionAnsweringMetrics) -> None:
        for row, span in other.spans.items():
            self._add(row, span, other.nulls[row])

    def answer(self, row: int, context: str) -> str:
        span = choose(self.spans[row], self.nulls[row], self.allow_no_answer, self.threshold)
        return "" if span is None else context[span.start : span.end]

    def compute(self) -> dict[str, float]:
        contexts, golds = self.contexts, self.golds
        scores: dict[str, list[float]] = {"exact_match": [], "f1": [], "has_exact": [], "has_f1": [], "no": []}
        for row in sorted(self.spans):
            predicted = self.answer(row, contexts[row])
            exact, f1 = best_of(exact_match, predicted, golds[row]), best_of(f1_score, predicted, golds[row])
            scores["exact_match"].append(exact)
            scores["f1"].append(f1)
            if golds[row]:
                scores["has_exact"].append(exact)
                scores["has_f1"].append(f1)
            else:
                scores["no"].append(exact)
        result = {name: _mean(scores[name]) for name in ("exact_match", "f1")}
        if self.allow_no_answer:  # a kind the eval split lacks is left out, not reported as 0
            split = {"has_answer_exact_match": "has_exact", "has_answer_f1": "has_f1", "no_answer_accuracy": "no"}
            result.update({name: _mean(scores[key]) for name, key in split.items() if scores[key]})
        return result


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
