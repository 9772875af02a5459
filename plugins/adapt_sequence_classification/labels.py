"""Label names and ids from the data: ClassLabel names, else the distinct values."""

from __future__ import annotations

from adapt import AdaptError


def label_names(dataset, column: str, num_labels: int | None) -> list[str]:
    """Names of the classes, in id order."""
    train = dataset["train"]
    feature = train.features[column]
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    values = set()
    for split in dataset.values():
        values.update(split.unique(column))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise AdaptError(
                f"task.label_column: column '{column}' holds negative labels ({min(values)}); "
                "unlabelled rows (such as GLUE's test split) cannot be trained or evaluated on"
            )
        count = max(max(values) + 1, num_labels or 0)
        return [str(i) for i in range(count)]
    if all(isinstance(v, str) for v in values):
        return sorted(values)
    raise AdaptError(
        f"task.label_column: column '{column}' must hold integers or strings, found {sorted(map(repr, values))[:5]}"
    )


def label_to_id(train, column: str, labels: list[str]) -> dict[str, int] | None:
    """The value -> id mapping for string labels; None when the column already holds ids."""
    feature = train.features[column]
    if getattr(feature, "names", None) or feature.dtype.startswith("int"):
        return None
    return {name: i for i, name in enumerate(labels)}
