"""The reference texts: the first `samples` texts of a reference file, or of the eval split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt import DataError, Run, load_file

TEXT_KEYS = ("text_column", "prompt_column", "tokens_column", "messages_column")


def reference_texts(run: Run, table: Any) -> list[str]:
    if table.reference_file is not None:
        if Path(table.reference_file).suffix == ".txt":
            lines = Path(table.reference_file).read_text(encoding="utf-8").splitlines()
            texts = [line for line in lines if line.strip()]
            where = table.reference_file
        else:
            rows = load_file(table.reference_file, "plugins.forgetting.reference_file")
            texts, where = _column(rows, table.text_column, run), table.reference_file
    else:
        texts, where = _column(run.dataset["eval"], table.text_column, run), "the eval split"
    texts = texts[: table.samples]
    if len(texts) < 4:
        raise DataError(f"plugins.forgetting: {where} holds {len(texts)} texts; the measurement needs at least 4")
    return texts


def _column(rows: Any, wanted: str | None, run: Run) -> list[str]:
    """The texts of `wanted`, else of the head's text column, else of the first column holding text."""
    head = run.table(run.recipe.head)
    candidates = [wanted] if wanted else [getattr(head, key, None) for key in TEXT_KEYS]
    candidates = [c for c in candidates if c] or list(rows.column_names)
    for name in candidates:
        if name in rows.column_names:
            texts = [_text(value) for value in rows[name][: 4 * 1024]]
            if any(texts):
                return [t for t in texts if t]
    if wanted:
        raise DataError(
            f"plugins.forgetting.text_column: no column '{wanted}' with text (columns: {', '.join(rows.column_names)})"
        )
    raise DataError(f"plugins.forgetting: no column holding text among {', '.join(rows.column_names)}; set text_column")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return " ".join(value)  # pre-split words
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "\n".join(str(m.get("content", "")) for m in value)  # chat messages
    return ""
