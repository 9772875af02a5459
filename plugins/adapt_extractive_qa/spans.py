"""From start and end logits to an answer: the best span of each window (its n best starts and ends, the end not
before the start, at most `max_answer_length` tokens, inside the context), the best of a question's windows, and
the no-answer score, as SQuAD's reference post-processing does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapt_extractive_qa.windows import NULL_POSITION

if TYPE_CHECKING:
    import torch


@dataclass
class Span:
    score: float  # start logit + end logit
    start: int  # first character in the context
    end: int  # one past the last character


def best_span(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    char_start: torch.Tensor,
    char_end: torch.Tensor,
    *,
    n_best: int,
    max_answer_length: int,
) -> Span | None:
    """The window's best valid span (a window's tensors are 1-D over its tokens), or None if it has no context."""
    context = char_start >= 0
    count = int(context.sum())
    if count == 0:
        return None
    k = min(n_best, count)
    starts = start_logits.float().masked_fill(~context, float("-inf")).topk(k)
    ends = end_logits.float().masked_fill(~context, float("-inf")).topk(k)
    scores = starts.values[:, None] + ends.values[None, :]
    length = ends.indices[None, :] - starts.indices[:, None]
    scores = scores.masked_fill((length < 0) | (length >= max_answer_length), float("-inf"))
    best = int(scores.argmax())
    if scores.view(-1)[best] == float("-inf"):
        return None
    first, last = starts.indices[best // k], ends.indices[best % k]
    return Span(float(scores.view(-1)[best]), int(char_start[first]), int(char_end[last]))


def read_window(start_logits: torch.Tensor, end_logits: torch.Tensor, *chars: torch.Tensor, **decoding: int):
    """One window's best span (`best_span` of its character spans and `decoding` options) and its no-answer score:
    what a question's windows are compared on."""
    return best_span(start_logits, end_logits, *chars, **decoding), null_score(start_logits, end_logits)


def null_score(start_logits: torch.Tensor, end_logits: torch.Tensor) -> float:
    """The window's score for "no answer here": both ends on the no-answer position."""
    return float(start_logits[NULL_POSITION].float() + end_logits[NULL_POSITION].float())


def better(a: Span | None, b: Span | None) -> Span | None:
    if a is None or (b is not None and b.score > a.score):
        return b
    return a


def choose(span: Span | None, null: float, allow_no_answer: bool, threshold: float) -> Span | None:
    """The question's answer from its best span and its lowest window null score (SQuAD 2.0's rule: no answer
    where the null score beats the best span's by more than `threshold`); None is no answer."""
    if span is None or (allow_no_answer and null - span.score > threshold):
        return None
    return span
