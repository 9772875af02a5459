"""The recipe's train and eval splits: a hub dataset (cache first) or local files, sliced and preprocessed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapt.errors import DataError
from adapt.loading.files import preprocess, read_data_file
from adapt.loading.hub import hub_offline

if TYPE_CHECKING:
    from adapt.recipe.sections import DataSection


def load_splits(section: DataSection, seed: int, train: bool = True) -> Any:
    """The recipe's splits as a DatasetDict with keys "train" and "eval" (only "eval" when `train` is
    False, for evaluating a finished run), each passed through `data.preprocess` when the recipe has one."""
    from datasets import DatasetDict

    if section.dataset is not None:
        train_split, evaluation = _dataset_splits(section)
    else:
        train_split = read_data_file(section.train_file, "data.train_file") if train else None
        evaluation = read_data_file(section.eval_file, "data.eval_file")
    splits = {}
    if train:
        if section.max_train_samples is not None and section.max_train_samples < len(train_split):
            train_split = train_split.shuffle(seed=seed).select(range(section.max_train_samples))
        splits["train"] = train_split
    if section.max_eval_samples is not None and section.max_eval_samples < len(evaluation):
        evaluation = evaluation.select(range(section.max_eval_samples))
    splits["eval"] = evaluation
    return preprocess(DatasetDict(splits), section.preprocess, section.preprocess_batched)


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
