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

from adapt.errors import AdaptError
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
    """`loader(name, **kwargs)` (any `from_pretrained`), trying the local cache before the network."""
    if Path(name).is_dir():
        return loader(name, **kwargs)
    try:
        return loader(name, local_files_only=True, **kwargs)
    except OSError as cached_error:
        if hub_offline():
            raise AdaptError(
                f"{key}: '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
                f"({cached_error}); download it once with network access, or use a local folder"
            ) from None
    try:
        return loader(name, **kwargs)
    except OSError as exc:
        raise AdaptError(f"{key}: cannot load '{name}' from the cache or the hub: {exc}") from None


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


def load_splits(section: DataSection, seed: int) -> Any:
    """The recipe's train and eval splits as a DatasetDict with keys "train" and "eval"."""
    from datasets import DatasetDict

    if section.dataset is not None:
        train, evaluation = _dataset_splits(section)
    else:
        train = _load_file(section.train_file, "data.train_file")
        evaluation = _load_file(section.eval_file, "data.eval_file")
    if section.max_train_samples is not None and section.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(section.max_train_samples))
    if section.max_eval_samples is not None and section.max_eval_samples < len(evaluation):
        evaluation = evaluation.select(range(section.max_eval_samples))
    return DatasetDict(train=train, eval=evaluation)


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
                    raise AdaptError(
                        f"data.dataset: '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                        "set; download it once with network access, or point data.train_file/eval_file at files"
                    )
                splits = load_dataset(name, section.config, revision=section.revision)
    except AdaptError:
        raise
    except (ValueError, FileNotFoundError, OSError) as exc:
        key = "data.config" if "config" in str(exc).lower() else "data.dataset"
        raise AdaptError(f"{key}: cannot load dataset '{name}' (config {section.config!r}): {exc}") from None
    for key in ("train_split", "eval_split"):
        split = getattr(section, key)
        if split not in splits:
            raise AdaptError(f"data.{key}: dataset '{name}' has no split '{split}'; it has: {', '.join(splits)}")
    return splits[section.train_split], splits[section.eval_split]


def _load_file(path: str | None, key: str) -> Any:
    from datasets import load_dataset

    assert path is not None
    builder, options = FILE_BUILDERS[Path(path).suffix.lower()]
    try:
        return load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as exc:  # noqa: BLE001 - parse errors come in many types; name the file
        raise AdaptError(f"{key}: cannot read '{path}' as {builder}: {type(exc).__name__}: {exc}") from None


def require_columns(dataset: Any, columns: dict[str, str], section: str = "task") -> None:
    """Every split must hold each column a recipe key names; the error names the key and what exists.

    `columns` maps recipe keys (in `section`) to the column names they give, e.g. {"text_column": "sentence"}.
    """
    for split, data in dataset.items():
        for key, column in columns.items():
            if column not in data.column_names:
                raise AdaptError(
                    f"{section}.{key}: the {split} split has no column '{column}'; "
                    f"its columns are: {', '.join(data.column_names)}"
                )
