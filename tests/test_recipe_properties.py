"""Property-based recipe validation (hypothesis): mutations of the shipped recipes and generated valid ones go
through `adapt.recipe.loader.validate` in-process. Whatever the input, validation either returns a recipe or lists
problems that each name a key; any other exception is a bug. A valid recipe survives its own round trip
through the saved recipe.toml."""

from __future__ import annotations

import copy
import math
import re
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapt.plugin.manager import Catalogue
from adapt.recipe.loader import validate

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))
SHIPPED = [tomllib.loads(p.read_text()) for p in RECIPES]
# "[table]: ...", "section.key: ...", "methods.lora.r: ...", "task.head: ...": a problem starts with its key
SEGMENT = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")'
NAMES_A_KEY = re.compile(rf"^(?:\[{SEGMENT}\]|{SEGMENT}(?:\.{SEGMENT})*): \S")
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "derandomize": True, "database": None}


@pytest.fixture(scope="module")
def infos():
    import os

    os.environ.setdefault("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    return Catalogue.discover().infos


def toml_values(depth: int = 1):
    """Any value a TOML file (or --set) can hold, including the numbers that are not finite."""
    scalars = st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=24),
        st.sampled_from(["auto", "lora", "fp32", "adamw", "all-linear", "", "0", "-1", "1e-3", "nan", "a\x00b"]),
        st.sampled_from(["x.py:f", "x" * 300 + ".tsv", "../shared/data/sst2/dev.tsv", "/", "a\x00.tsv:f"]),
    )
    if depth == 0:
        return scalars
    inner = toml_values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(min_size=1, max_size=10), inner, max_size=3),
    )


def check(raw: dict, infos, check_data: bool = False) -> None:
    problems: list[str] = []
    try:
        recipe = validate(raw, infos, problems, source="fuzz.toml", broken={}, check_data=check_data)
    except Exception as exc:  # noqa: BLE001 - the property: nothing but listed problems
        pytest.fail(f"validate raised {type(exc).__name__}: {exc}\nfor {raw!r}")
    for problem in problems:
        assert NAMES_A_KEY.match(problem), f"a problem that names no key: {problem!r}\nfor {raw!r}"
    if not problems:
        assert recipe is not None
        saved = tomllib.loads(tomli_w.dumps(recipe.to_dict()))  # what a run writes and `eval` reads back
        again: list[str] = []
        assert validate(saved, infos, again, source="saved.toml", broken={}, check_data=False) is not None
        assert again == []


def mutate(raw: dict, data) -> None:
    """One random edit: set, add or delete a key at any depth, or replace a whole table."""
    node, path = raw, []
    while isinstance(node, dict) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node)))
        if not isinstance(node[key], dict):
            break
        node, path = node[key], [*path, key]
    if not isinstance(node, dict):
        return
    edit = data.draw(st.sampled_from(["set", "add", "delete", "replace"]))
    if edit == "delete" and node:
        del node[data.draw(st.sampled_from(sorted(node)))]
    elif edit == "set" and node:
        node[data.draw(st.sampled_from(sorted(node)))] = data.draw(toml_values())
    elif edit == "add":
        node[data.draw(st.text(min_size=1, max_size=12))] = data.draw(toml_values())
    elif edit == "replace" and path:
        parent = raw
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = data.draw(toml_values())


@settings(max_examples=400, **SETTINGS)
@given(data=st.data())
def test_mutated_shipped_recipes_fail_only_with_problems_that_name_a_key(data, infos):
    raw = copy.deepcopy(data.draw(st.sampled_from(SHIPPED)))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        mutate(raw, data)
    check(raw, infos, check_data=True)  # file checks too: a name no file system takes is a problem, not a crash


@settings(max_examples=150, **SETTINGS)
@given(
    batch=st.one_of(st.integers(min_value=1, max_value=4096), st.just("auto")),
    learning_rate=st.floats(min_value=1e-8, max_value=1.0),
    epochs=st.floats(min_value=0.01, max_value=100),
    weight_decay=st.floats(min_value=0, max_value=1),
    warmup=st.floats(min_value=0, max_value=0.99),
    rank=st.integers(min_value=1, max_value=512),
    targets=st.one_of(st.just("all-linear"), st.lists(st.sampled_from(["query", "key", "value", "dense"]), min_size=1)),
    optimizer=st.sampled_from(["adamw", "adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd"]),
    precision=st.sampled_from(["auto", "fp32", "bf16", "fp16"]),
    checkpointing=st.booleans(),
    max_length=st.integers(min_value=8, max_value=4096),
)
def test_generated_valid_recipes_validate_and_round_trip(infos, **values):
    raw = copy.deepcopy(SHIPPED[[p.name for p in RECIPES].index("lora-sst2.toml")])
    raw["train"].update(
        batch_size=values["batch"],
        learning_rate=values["learning_rate"],
        epochs=values["epochs"],
        weight_decay=values["weight_decay"],
        warmup_ratio=values["warmup"],
        optimizer=values["optimizer"],
        precision=values["precision"],
        gradient_checkpointing=values["checkpointing"],
    )
    raw["methods"]["lora"].update(r=values["rank"], target_modules=values["targets"])
    raw["data"]["max_length"] = values["max_length"]
    assert all(math.isfinite(v) for v in (values["learning_rate"], values["epochs"]))
    problems: list[str] = []
    recipe = validate(raw, infos, problems, source="generated.toml", broken={}, check_data=False)
    assert problems == [] and recipe is not None
    check(raw, infos)
