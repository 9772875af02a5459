"""Sentence-level tasks derived from CoNLL-2003's word tags, named by `data.preprocess` in the
multi-label and regression recipes. Each function takes one raw row and returns the columns to add."""

ENTITY_TYPES = ("PER", "ORG", "LOC", "MISC")


def _entities(tags: list[str]) -> list[str]:
    """The type of each entity (tags are IOB2: every entity starts with B-)."""
    return [tag[2:] for tag in tags if tag.startswith("B-")]


def entity_types(row: dict) -> dict:
    """Which entity types the sentence mentions (multi-label): {"text": ..., "entity_types": ["LOC", "PER"]}."""
    return {"text": " ".join(row["tokens"]), "entity_types": sorted(set(_entities(row["ner_tags"])))}


def entity_counts(row: dict) -> dict:
    """How many entities of each type the sentence mentions (regression, one target per type)."""
    found = _entities(row["ner_tags"])
    return {"text": " ".join(row["tokens"]), **{kind: float(found.count(kind)) for kind in ENTITY_TYPES}}
