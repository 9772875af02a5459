"""Loading models and data cache-first, so a hub id works offline once cached.

Both go to the local Hugging Face cache before the network: with the hub unreachable and
HF_HUB_OFFLINE unset, the network path costs minutes of retries, so it is only the fallback for what
the cache lacks.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from adapt import meta_models
from adapt.errors import DataError
from adapt.sections import DataSection

T = TypeVar("T")

# `datasets` builder and options for each local file type; TSV as GLUE writes it (no quoting).
FILE_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False}),
    ".csv": ("csv", {"keep_default_na": False}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def from_pretrained_cached(loader: Callable[..., T], name: str, *, key: str, **kwargs: Any) -> T:
    """`loader(name, **kwargs)` (any `from_pretrained`), trying the local cache before the network. Inside
    `meta_models.models_on_meta()` (`adapt plan`) a model is built on the meta device from its config instead."""
    if meta_models.active():
        if meta_models.is_config_loader(loader) and meta_models.config_path():
            name = meta_models.config_path()
        elif meta_models.is_model_loader(loader):
            from transformers import AutoConfig

            def load_config(**config_kwargs):
                options = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
                return from_pretrained_cached(AutoConfig.from_pretrained, name, key=key, **options, **config_kwargs)

            return meta_models.build_on_meta(loader, name, kwargs, load_config)
    if Path(name).is_dir():
        return loader(name, **kwargs)
    try:
        return loader(name, local_files_only=True, **kwargs)
    except OSError as cached_error:
        if hub_offline():
            raise DataError(
                f"{key}: '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
                f"({cached_error}); download it once with network access, or use a local folder"
            ) from None
    try:
        return loader(name, **kwargs)
    except OSError as exc:
        raise DataError(f"{key}: cannot load '{name}' from the cache or the hub: {exc}") from None


def _cached_hub_dataset(section: DataSection) -> Any:
    """The dataset from the local hub cache, or None when the cache does not hold it."""
    from datasets import load_dataset
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            section.dataset, repo_type="dataset", revision=section.revision, local_files_only=True
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None
    return load_dataset(folder, section.config)


def load_splits(section: DataSection, seed: int, train: bool = True) -> Any:
    """The recipe's splits as a DatasetDict with keys "train" and "eval" (only "eval" when `train` is
    False, for evaluating a finished run), each passed through `data.preprocess` when the recipe has one."""
    from datasets import DatasetDict

    if section.dataset is not None:
        train_split, evaluation = _dataset_splits(section)
    else:
        train_split = _load_file(section.train_file, "data.train_file") if train else None
        evaluation = _load_file(section.eval_file, "data.eval_file")
    splits = {}
    if train:
        if section.max_train_samples is not None and section.max_train_samples < len(train_split):
            train_split = train_split.shuffle(seed=seed).select(range(section.max_train_samples))
        splits["train"] = train_split
    if section.max_eval_samples is not None and section.max_eval_samples < len(evaluation):
        evaluation = evaluation.select(range(section.max_eval_samples))
    splits["eval"] = evaluation
    return preprocess(DatasetDict(splits), section.preprocess)


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
    return _load_file(str(path), key)


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


def preprocess(dataset: Any, spec: str | None) -> Any:
    if spec is None:
        return dataset
    function = preprocess_function(spec)

    def apply(row: dict[str, Any]) -> dict[str, Any]:
        try:
            result = function(row)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"data.preprocess: {spec} failed on row {row}: {type(exc).__name__}: {exc}") from None
        if not isinstance(result, dict):
            raise DataError(f"data.preprocess: {spec} must return a dict of columns, returned {type(result).__name__}")
        return result

    return dataset.map(apply, desc="preprocessing")


def _dataset_splits(section: DataSection) -> tuple[Any, Any]:
    from datasets import load_dataset

    name = section.dataset
    try:
        if Path(name).is_dir():
            splits = load_dataset(name, section.config)
        else:
            splits = _cached_hub_dataset(section)
            if splits is None:
                if hub_offline():
                    raise DataError(
                        f"data.dataset: '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                        "set; download it once with network access, or point data.train_file/eval_file at files"
                    )
                splits = load_dataset(name, section.config, revision=section.revision)
    except DataError:
        raise
    except (ValueError, FileNotFoundError, OSError) as exc:
        key = "data.config" if "config" in str(exc).lower() else "data.dataset"
        raise DataError(f"{key}: cannot load dataset '{name}' (config {section.config!r}): {exc}") from None
    for key in ("train_split", "eval_split"):
        split = getattr(section, key)
        if split not in splits:
            raise DataError(f"data.{key}: dataset '{name}' has no split '{split}'; it has: {', '.join(splits)}")
    return splits[section.train_split], splits[section.eval_split]


def _load_file(path: str | None, key: str) -> Any:
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
