"""A question and its context as overlapping windows of the model's length (the question first, then as much of
the context as fits, the next window `doc_stride` tokens back), each labelled with the answer's first and last
token, or with the no-answer position (the first token, never a context token) where the window does not hold the
whole answer."""

from __future__ import annotations

from typing import Any

from adapt import WINDOW_OF, DataError

#: Each window's per-token character span in its context, -1 for tokens outside the context (question, specials,
#: padding): what maps a predicted token span back to characters. `example_` keys never reach the model.
CHAR_START, CHAR_END = "example_char_start", "example_char_end"
OUTSIDE = -1
NULL_POSITION = 0


def encode_windows(
    examples: dict[str, list],
    indices: list[int],
    *,
    tokenizer: Any,
    max_length: int,
    doc_stride: int,
    labelled: bool = True,
) -> dict[str, list]:
    """Canonical rows (`question`, `context`, `answer_starts`, `answer_texts`) as windows: model inputs, the row
    each came from (`WINDOW_OF`), its tokens' character spans and, when `labelled`, `start_positions` and
    `end_positions` for the first answer."""
    questions = [q.lstrip() for q in examples["question"]]  # leading spaces would only cost context room
    try:
        features = tokenizer(
            questions,
            examples["context"],
            truncation="only_second",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
    except Exception as exc:  # noqa: BLE001 - the tokenizer says "too long" in several ways
        raise _room_problem(tokenizer, questions, indices, max_length, doc_stride, exc) from None
    rows = features.pop("overflow_to_sample_mapping")
    offsets = features.pop("offset_mapping")
    columns: dict[str, list] = {WINDOW_OF: [], CHAR_START: [], CHAR_END: []}
    if labelled:
        columns["start_positions"], columns["end_positions"] = [], []
    for window, row in enumerate(rows):
        in_context = [sequence == 1 for sequence in features.sequence_ids(window)]
        starts = [o[0] if inside else OUTSIDE for o, inside in zip(offsets[window], in_context, strict=True)]
        ends = [o[1] if inside else OUTSIDE for o, inside in zip(offsets[window], in_context, strict=True)]
        columns[WINDOW_OF].append(indices[row])
        columns[CHAR_START].append(starts)
        columns[CHAR_END].append(ends)
        if labelled:
            span = None
            if examples["answer_texts"][row]:
                first = examples["answer_starts"][row][0]
                span = token_span(starts, ends, first, first + len(examples["answer_texts"][row][0]))
            start, end = span or (NULL_POSITION, NULL_POSITION)
            columns["start_positions"].append(start)
            columns["end_positions"].append(end)
    return {**features, **columns}


def token_span(starts: list[int], ends: list[int], first: int, end: int) -> tuple[int, int] | None:
    """The first and last token of characters [first, end) in a window, or None unless the window holds them all
    (an answer cut by the window's edge is the neighbouring window's to label)."""
    context = [t for t, s in enumerate(starts) if s != OUTSIDE]
    if not context or starts[context[0]] > first or ends[context[-1]] < end:
        return None
    start_token = next(t for t in context if ends[t] > first)
    end_token = next(t for t in reversed(context) if starts[t] < end)
    return start_token, end_token


def _room_problem(tokenizer, questions, indices, max_length, doc_stride, exc) -> DataError:
    """The tokenizer refused a batch: name the row whose question leaves no room for `doc_stride` and a context."""
    lengths = [len(ids) for ids in tokenizer(questions)["input_ids"]]
    worst = max(range(len(lengths)), key=lengths.__getitem__)
    return DataError(
        f"task.doc_stride: row {indices[worst] + 1}'s question takes {lengths[worst]} of data.max_length = "
        f"{max_length} tokens, leaving too little room for its context with doc_stride = {doc_stride} tokens of "
        f"overlap; shorten the question, raise data.max_length or lower task.doc_stride ({exc})"
    )
