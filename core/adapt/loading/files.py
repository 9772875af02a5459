"""Local data files (.tsv, .csv, .jsonl, .json, .parquet) as datasets, checked for what a recipe names, and
`data.preprocess`, the user's function applied to every row."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapt.errors import DataError

# `datasets` builder and options for each local file type; TSV as GLUE writes it (no quoting).
FILE_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False}),
    ".csv": ("csv", {"keep_default_na": False}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}


def file_problem(path: str | Path, key: str, suffixes: tuple[str, ...] = tuple(FILE_BUILDERS)) -> str | None:
    """What is wrong with the file a recipe key or option names (a type adapt cannot read, or no such
    file), or None. With `suffixes=()` any file type will do."""
    file = Path(path)
    if suffixes and file.suffix.lower() not in suffixes:
        return f"{key}: unsupported file type '{file.suffix}'; use one of {', '.join(suffixes)}"
    try:
        found = file.is_file()
    except OSError as exc:  # is_file() answers False only for a missing file; a name too long raises
        shown = str(path) if len(str(path)) <= 80 else f"{str(path)[:60]}...{str(path)[-15:]}"
        return f"{key}: cannot use '{shown}' as a file name ({exc.strerror or exc})"
    if not found:
        return f"{key}: no such file '{path}' (looked in {file.resolve().parent})"
    return None


def load_file(path: str | Path, key: str) -> Any:
    """One local data file (.tsv, .csv, .jsonl, .json, .parquet) as a Dataset; errors name `key`."""
    problem = file_problem(path, key)
    if problem:
        raise DataError(problem)
    return read_data_file(str(path), key)


def preprocess_function(spec: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The function named by `data.preprocess` ("FILE.py:FUNCTION"), imported from its file."""
    import importlib.util

    file, _, name = spec.rpartition(":")
    path = Path(file)
    problem = file_problem(path, "data.preprocess", suffixes=())
    if problem:
        raise DataError(problem)
    module_spec = importlib.util.spec_from_file_location(f"adapt_preprocess_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file; say which
        raise DataError(f"data.preprocess: importing '{file}' failed: {type(exc).__name__}: {exc}") from None
    function = getattr(module, name, None)
    if not callable(function):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise DataError(f"data.preprocess: '{file}' defines no function '{name}'; it defines: {', '.join(found)}")
    return function


def preprocess(dataset: Any, spec: str | None, batched: bool = False) -> Any:
    """`dataset` (a Dataset or DatasetDict) through the `data.preprocess` function `spec`: row by row, its result
    added to each row; or `batched` (`data.preprocess_batched`), batches of rows in, the result's rows out."""
    if spec is None:
        return dataset
    function = preprocess_function(spec)

    def apply(rows: dict[str, Any]) -> dict[str, Any]:
        try:
            result = function(rows)
        except Exception as exc:  # noqa: BLE001
            where = "a batch of rows" if batched else f"row {rows}"
            raise DataError(f"data.preprocess: {spec} failed on {where}: {type(exc).__name__}: {exc}") from None
        if not isinstance(result, dict):
            raise DataError(f"data.preprocess: {spec} must return a dict of columns, returned {type(result).__name__}")
        if batched:
            lengths = {column: len(values) if isinstance(values, list) else None for column, values in result.items()}
            if None in lengths.values() or len(set(lengths.values())) > 1:
                raise DataError(
                    f"data.preprocess: {spec} is batched (data.preprocess_batched), so it must return a dict of "
                    f"equally long lists, one per column; it returned lengths {lengths}"
                )
        return result

    if not batched:
        return dataset.map(apply, desc="preprocessing")
    from datasets import DatasetDict

    columns = dataset.column_names
    if isinstance(dataset, DatasetDict):  # {split: columns}: each split drops its own raw columns
        return DatasetDict(
            {name: split.map(apply, batched=True, remove_columns=columns[name], desc="preprocessing")
             for name, split in dataset.items()}
        )
    return dataset.map(apply, batched=True, remove_columns=columns, desc="preprocessing")


def read_data_file(path: str | None, key: str) -> Any:
    """A data file already checked by `file_problem` as a Dataset; a file with no rows or a column mixing
    value types is a DataError naming `key`."""
    from datasets import load_dataset

    assert path is not None
    builder, options = FILE_BUILDERS[Path(path).suffix.lower()]
    no_rows = DataError(f"{key}: '{path}' has no rows")
    if _without_rows(Path(path), builder):
        raise no_rows
    try:
        dataset = load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as exc:  # noqa: BLE001 - parse errors come in many types; name the file
        raise DataError(f"{key}: cannot read '{path}' as {builder}: {type(exc).__name__}: {exc}") from None
    if len(dataset) == 0:
        raise no_rows
    for column, feature in dataset.features.items():
        if type(feature).__name__ == "Json":  # datasets' fallback for a column whose rows disagree on the type
            raise DataError(
                f"{key}: column '{column}' of '{path}' mixes value types (numbers and text, say); give it one "
                "type in every row"
            )
    return dataset


def _without_rows(path: Path, builder: str) -> bool:
    """An empty file, or a CSV/TSV with nothing under its header (datasets' own errors say neither)."""
    try:
        with path.open("rb") as handle:
            head = [line for line in (handle.readline() for _ in range(3)) if line.strip()]
    except OSError:
        return False  # datasets will name what is wrong with it
    return not head or (builder == "csv" and len(head) == 1)


def require_columns(dataset: Any, columns: dict[str, str], section: str = "task") -> None:
    """Every split must hold each column a recipe key names; the error names the key and what exists.

    `columns` maps recipe keys (in `section`) to the column names they give, e.g. {"text_column": "sentence"}.
    """
    for split, data in dataset.items():
        for key, column in columns.items():
            if column not in data.column_names:
                raise DataError(
                    f"{section}.{key}: the {split} split has no column '{column}'; "
                    f"its columns are: {', '.join(data.column_names)}"
                )
