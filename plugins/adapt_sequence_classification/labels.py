"""Label names and ids from the data: ClassLabel names, else the distinct values."""

from __future__ import annotations

from adapt import DataError


def label_names(dataset, column: str, num_labels: int | None, names: list[str] | None = None) -> list[str]:
    """Names of the classes, in id order: the recipe's `label_names` if given (checked against the
    data), else ClassLabel names, else the label values (integers, or sorted strings)."""
    feature = next(iter(dataset.values())).features[column]
    found = getattr(feature, "names", None)
    if found:
        return _named(list(found), names, f"column '{column}' has {len(found)} classes")
    refuse_header_rows(dataset, column)
    # the classes are the training data's; a label only in the eval data is an error (check_known_labels)
    values = set()
    for split in [dataset["train"]] if "train" in dataset else dataset.values():
        values.update(split.unique(column))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise DataError(
                f"task.label_column: column '{column}' holds negative labels ({min(values)}); "
                "unlabelled rows (such as GLUE's test split) cannot be trained or evaluated on"
            )
        count = max(max(values) + 1, num_labels or 0)
        return _named([str(i) for i in range(count)], names, f"column '{column}' holds ids 0..{count - 1}")
    if all(isinstance(v, str) for v in values):
        if names is not None:
            missing = sorted(values - set(names))
            if missing:
                raise DataError(f"task.label_names: does not name the labels {missing} found in column '{column}'")
            return list(names)
        return sorted(values)
    raise DataError(
        f"task.label_column: column '{column}' must hold integers or strings, found {sorted(map(repr, values))[:5]}"
    )


def label_to_id(train, column: str, labels: list[str]) -> dict[str, int] | None:
    """The value -> id mapping for string labels; None when the column already holds ids."""
    feature = train.features[column]
    if getattr(feature, "names", None) or feature.dtype.startswith("int"):
        return None
    return {name: i for i, name in enumerate(labels)}


def _named(ids: list[str], names: list[str] | None, what: str) -> list[str]:
    if names is None:
        return ids
    if len(names) != len(ids):
        raise DataError(f"task.label_names: {len(names)} names given, but {what}; give one name per class")
    return list(names)


def class_weights(train, labels: list[str], weights: list[float] | str | None) -> list[float] | None:
    """Per-class loss weights: the recipe's list, or "balanced" (n / (classes x count), as scikit-learn)."""
    if weights is None:
        return None
    if weights != "balanced":
        if len(weights) != len(labels):
            raise DataError(
                f"task.class_weights: {len(weights)} weights given for {len(labels)} classes ({', '.join(labels)})"
            )
        return list(weights)
    counts = [0] * len(labels)
    for label in train["labels"]:
        counts[label] += 1
    total = sum(counts)
    return [total / (len(labels) * c) if c else 0.0 for c in counts]


def refuse_header_rows(dataset, column: str) -> None:
    """A label that is the label column's own name is a header line in the middle of a file (two files joined with
    `cat`), not a class: name its row."""
    import pyarrow.compute as pc

    for name, split in dataset.items():
        values = split.with_format("arrow")[column]
        if not (values.type == "string" or values.type == "large_string"):
            continue
        row = pc.index(values, column).as_py()
        if row >= 0:
            raise DataError(
                f"task.label_column: row {row + 1} of the {name} split has the label '{column}', the column's own "
                "name: a header line in the middle of the file (two files joined with cat?); remove that line"
            )


def check_known_labels(dataset, column: str, labels: list[str], mapping: dict[str, int] | None) -> None:
    """Every row's label is one of the run's classes (the training data's); else name the first that is not,
    instead of a new class appearing from the eval data or an index error in the loss."""
    known = set(mapping) if mapping is not None else set(range(len(labels)))
    refuse_header_rows(dataset, column)
    for name, split in dataset.items():
        if getattr(split.features[column], "names", None):
            continue  # ClassLabel ids: the dataset itself guarantees them
        import pyarrow.compute as pc

        values = split.with_format("arrow")[column]  # one pass in Arrow, not a Python object per row
        unknown = [value for value in pc.unique(values).to_pylist() if value not in known]
        if unknown:
            value = unknown[0]
            row = pc.index(values, value).as_py() + 1
            raise DataError(
                f"task.label_column: the {name} split has label '{value}' in row {row}, which is not one of the "
                f"run's classes (those of the training data): {', '.join(labels)}"
            )
