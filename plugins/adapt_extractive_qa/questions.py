"""A split's questions in one canonical form, whatever the data's: columns `question`, `context`, `answer_texts`
and `answer_starts` (empty lists: unanswerable), every answer checked against its context's characters.

Read: an answers column in SQuAD's form ({"text": [...], "answer_start": [...]}, or a list of {"text",
"answer_start"} objects), or a column of answer text beside a column of its start character, or a SQuAD-format
JSON file itself ({"data": [{"paragraphs": [{"context", "qas": [...]}]}]})."""

from __future__ import annotations

from typing import Any

from adapt import DataError, Table, require_columns


def is_squad_file(split: Any) -> bool:
    """The split is a SQuAD-format JSON file read whole: one row per file, a `data` column of articles."""
    return "data" in split.column_names and "paragraphs" in str(split.features["data"])


def squad_questions(split: Any) -> dict[str, list]:
    """The questions of a SQuAD-format file's articles, in file order (SQuAD 2.0's `is_impossible` ones without
    answers, their `plausible_answers` ignored)."""
    columns: dict[str, list] = {"question": [], "context": [], "answers": []}
    for articles in split["data"]:
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                    columns["question"].append(qa["question"])
                    columns["context"].append(paragraph["context"])
                    columns["answers"].append(answers)
    return columns


def canonical_questions(split: Any, name: str, table: Table) -> Any:
    """The split as canonical questions (see the module), or a DataError naming the row and what is wrong."""
    from datasets import Dataset

    if is_squad_file(split):
        given = squad_questions(split)
        keys = {"question": "question", "context": "context", "answers": "answers"}
        where = "SQuAD file"
    else:
        columns = {"question_column": table.question_column, "context_column": table.context_column,
                   "answers_column": table.answers_column}
        if table.answer_start_column:
            columns["answer_start_column"] = table.answer_start_column
        require_columns({name: split}, columns)
        keys = {"question": table.question_column, "context": table.context_column, "answers": table.answers_column}
        given = {key: split[column] for key, column in keys.items()}
        if table.answer_start_column:
            given["starts"] = split[table.answer_start_column]
        where = f"{name} split"
    out: dict[str, list] = {"question": [], "context": [], "answer_texts": [], "answer_starts": []}
    for index in range(len(given["question"])):
        row = index + 1
        question, context = given["question"][index], given["context"][index]
        for key, value in (("question", question), ("context", context)):
            if not isinstance(value, str) or not value.strip():
                raise DataError(
                    f"task.{key}_column: row {row} of the {where} has no {key} ('{keys[key]}' is {value!r}); "
                    "give a non-empty text"
                )
        if "starts" in given:  # answer text beside a start column (never in a SQuAD file)
            texts, starts = _text_and_start(given["answers"][index], given["starts"][index], row, where, table)
        else:
            texts, starts = _squad_answers(given["answers"][index], row, where, keys["answers"])
        for text, start in zip(texts, starts, strict=True):
            found = context[start : start + len(text)] if isinstance(start, int) and start >= 0 else None
            if found != text:
                raise DataError(
                    f"task.answers_column: row {row} of the {where}: answer {text!r} is not at character {start} of "
                    f"its context (the context has {found!r} there); give each answer's start character in the "
                    "context, counting from 0"
                )
        if not texts and not table.allow_no_answer:
            raise DataError(
                f"task.allow_no_answer: row {row} of the {where} has no answer; set task.allow_no_answer = true to "
                "train and score unanswerable questions (SQuAD 2.0), or drop the row"
            )
        out["question"].append(question)
        out["context"].append(context)
        out["answer_texts"].append(texts)
        out["answer_starts"].append(starts)
    return Dataset.from_dict(out)


def _squad_answers(value: Any, row: int, where: str, column: str) -> tuple[list[str], list[int]]:
    if isinstance(value, dict) and set(value) >= {"text", "answer_start"}:
        texts, starts = list(value["text"] or []), list(value["answer_start"] or [])
    elif isinstance(value, list) and all(isinstance(a, dict) and {"text", "answer_start"} <= set(a) for a in value):
        texts, starts = [a["text"] for a in value], [a["answer_start"] for a in value]
    else:
        raise DataError(
            f"task.answers_column: row {row} of the {where} has {value!r} in '{column}'; give SQuAD's form, "
            '{"text": ["..."], "answer_start": [12]} (empty lists: no answer), or name the start column with '
            "task.answer_start_column and give the answer's text"
        )
    if len(texts) != len(starts):
        raise DataError(f"task.answers_column: row {row} of the {where} has {len(texts)} answer texts but "
                        f"{len(starts)} starts; give one start per text")
    return texts, starts


def _text_and_start(text: Any, start: Any, row: int, where: str, table: Table) -> tuple[list[str], list[int]]:
    """An answer as plain text and its start character; no text (null or "") is no answer."""
    if text is None or text == "":
        return [], []
    if not isinstance(text, str):
        raise DataError(f"task.answers_column: row {row} of the {where} has {text!r}; give the answer's text")
    if not isinstance(start, int) or isinstance(start, bool):
        raise DataError(
            f"task.answer_start_column: row {row} of the {where} has {start!r} in '{table.answer_start_column}'; "
            "give the answer's start character in the context, counting from 0"
        )
    return [text], [start]
