"""Recipes: TOML files validated as a whole, with every problem reported at once.

A recipe has the core's tables ([model], [data], [task], [train], [output], [plugins]) and one table per
method plugin ([methods.NAME]); the head's options live in [task] beside `head`, and infrastructure
plugins take theirs from [plugins.NAME]. Each plugin validates its own table through the `Table` it
declares in `adapt_plugin_info`.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from adapt.errors import RecipeError
from adapt.loading.files import FILE_BUILDERS, file_problem
from adapt.recipe.composition import composition_problems, order_methods
from adapt.recipe.sections import (
    CORE_SECTIONS,
    DataSection,
    ModelSection,
    OutputSection,
    PluginsSection,
    TaskSection,
    TrainSection,
)
from adapt.types import PluginInfo, Table

TOP_LEVEL = (*CORE_SECTIONS, "methods", "plugins")
REQUIRED_SECTIONS = ("model", "data", "task", "output")
T = TypeVar("T", bound=Table)


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. `methods` is in application order; `tables` maps every selected plugin
    (head, methods, infrastructure) to its validated table."""

    source: str
    model: ModelSection
    data: DataSection
    train: TrainSection
    output: OutputSection
    head: str
    methods: tuple[str, ...]
    disabled: tuple[str, ...]
    tables: Mapping[str, Table]
    opted_in: tuple[str, ...] = ()
    """Opt-in infrastructure plugins (`PluginInfo.opt_in`) that take part because the recipe has their table."""

    @overload
    def table(self, plugin: type[T]) -> T: ...

    @overload
    def table(self, plugin: str) -> Table: ...

    def table(self, plugin: str | type[Table]) -> Table:
        """The validated table of `plugin`: a plugin name, or the plugin's own Table class (typed, and without
        repeating the entry-point name)."""
        if isinstance(plugin, type):
            owners = [name for name, table in self.tables.items() if type(table) is plugin]
            if len(owners) == 1:
                return self.tables[owners[0]]
            why = f"plugins {', '.join(owners)} share it; ask by name" if owners else "no plugin of this run has it"
            raise KeyError(
                f"no single recipe table of type {plugin.__name__}: {why} (selected: {', '.join(self.tables)})"
            )
        try:
            return self.tables[plugin]
        except KeyError:
            raise KeyError(f"no recipe table for plugin '{plugin}' (selected: {', '.join(self.tables)})") from None

    def to_dict(self) -> dict[str, Any]:
        """The recipe with every default filled in, as TOML-ready data (written to the run directory)."""

        def dump(table: Table) -> dict[str, Any]:
            # by alias: the names a recipe uses (a field `lam` read from `lambda`), so the saved recipe reloads
            return table.model_dump(mode="json", exclude_none=True, by_alias=True)

        infra = {n: dump(t) for n, t in self.tables.items() if n != self.head and n not in self.methods}
        return {
            "model": dump(self.model),
            "data": dump(self.data),
            "task": {"head": self.head, **dump(self.tables[self.head])},
            "methods": {name: dump(self.tables[name]) for name in self.methods},
            "train": dump(self.train),
            "output": dump(self.output),
            "plugins": {
                "disable": list(self.disabled),
                **{n: t for n, t in infra.items() if t or n in self.opted_in},  # an opt-in table, even empty, is kept
            },
        }


def load_recipe(
    path: str | Path,
    plugins: Mapping[str, PluginInfo],
    overrides: Sequence[str] = (),
    broken: Mapping[str, str] | None = None,
    check_data: bool = True,
    notes: list[str] | None = None,
    values: Mapping[str, Any] | None = None,
) -> Recipe:
    """Read, override and validate a recipe file. Raises RecipeError listing every problem.

    `values` sets dotted keys to typed values after the overrides (a sweep's trial parameters).

    `check_data=False` skips checking that data files exist (a finished run predicting without them).
    With a `notes` list (a recipe a run saved), tables of infrastructure plugins that are no longer installed
    are left out, with a note, instead of being errors: such plugins never change the trained model."""
    problems: list[str] = []
    raw = recipe_data(path, overrides, values, problems)
    recipe = validate(raw, plugins, problems, source=str(path), broken=broken or {}, check_data=check_data, notes=notes)
    if problems:
        raise RecipeError(str(path), problems)
    assert recipe is not None
    return recipe


def recipe_data(
    path: str | Path, overrides: Sequence[str], values: Mapping[str, Any] | None, problems: list[str]
) -> dict[str, Any]:
    """A recipe file's TOML data with the overrides and `values` applied, not yet validated (problems with
    the overrides are appended to `problems`). Raises RecipeError when the file cannot be read as TOML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read the recipe: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise RecipeError(
            str(path), [f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} on line {line}; save it as UTF-8"]
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [f"not valid TOML: {exc}"]) from None
    apply_overrides(raw, overrides, problems)
    for key, value in (values or {}).items():
        set_key(raw, key, value, problems, label=key)
    return raw


def parse_value(text: str) -> Any:
    """A `--set` value: any TOML value (numbers, booleans, lists, quoted strings), else a bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], problems: list[str]) -> None:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not all(key.strip().split(".")):
            problems.append(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.learning_rate=1e-3")
            continue
        set_key(raw, key.strip(), parse_value(value.strip()), problems, label=f"--set {item!r}")


def output_override(folder: str | Path) -> str:
    """The `--set` item that puts a run in `folder` (quoted, so any path reads back as a string)."""
    return f"output.dir={json.dumps(str(folder))}"


def set_key(raw: dict[str, Any], key: str, value: Any, problems: list[str], label: str) -> None:
    """Set the dotted `key` ("methods.lora.r") of a raw recipe to `value`, creating tables on the way."""
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            problems.append(f"{label}: '{'.'.join(parts[: depth + 1])}' is a value, not a table")
            return
    node[parts[-1]] = value


def toml_key(part: object) -> str:
    """A key as TOML writes it in a dotted path: bare when it can be, else quoted (`data.":"`)."""
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text, ensure_ascii=False)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def _clauses(*parts: str) -> str:
    """Join message parts with "; ", except after a question."""
    out = ""
    for part in filter(None, parts):
        out += (" " if out.endswith("?") else "; " if out else "") + part
    return out


def _merge_union_errors(errors: list[dict]) -> list[dict]:
    """Pydantic reports a value that fits no member of `list[float] | Literal["balanced"]` once per member,
    under locations like ('class_weights', 'list[float]'). Make that one error: "... a valid list or 'balanced'"."""
    out: list[dict] = []
    unions: dict[str, dict] = {}
    for err in errors:
        loc = err["loc"]
        if len(loc) >= 2 and isinstance(loc[1], str) and err["type"] != "extra_forbidden":
            if loc[0] in unions:
                unions[loc[0]]["msg"] += " or " + err["msg"].removeprefix("Input should be ")
                continue
            err = unions[loc[0]] = {**err, "loc": loc[:1]}
        out.append(err)
    return out


def _validation_problems(where: str, model: type[Table], exc: ValidationError) -> list[str]:
    out = []
    for err in _merge_union_errors(exc.errors()):
        loc = ".".join([where, *(toml_key(p) for p in err["loc"])])
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(err["loc"][-1])
            valid = list(model.model_fields)
            listing = ", ".join(valid) if valid else "(this table takes no keys)"
            out.append(f"{loc}: " + _clauses("unknown key", _suggest(key, valid), f"valid keys: {listing}"))
        elif kind == "missing":
            out.append(f"{loc}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = "" if kind == "value_error" else f" (got {err['input']!r})"
            out.append(f"{loc}: {msg}{got}")
    return out


def _check_table(
    where: str, model: type[Table], value: Any, problems: list[str], drop: Sequence[str] = ()
) -> Table | None:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        return None
    try:
        return model.model_validate({k: v for k, v in value.items() if k not in drop})
    except ValidationError as exc:
        problems.extend(_validation_problems(where, model, exc))
        return None


def _plugin_name_problem(
    where: str, name: str, kind: str, plugins: Mapping[str, PluginInfo], broken: Mapping[str, str]
) -> str | None:
    if name in broken:
        return f"{where}: plugin '{name}' is installed but failed to load: {broken[name]}"
    info = plugins.get(name)
    of_kind = sorted(n for n, i in plugins.items() if i.kind == kind)
    if info is None:
        installed = f"installed {kind}s: {', '.join(of_kind) or 'none'} (see `adapt plugins`)"
        return f"{where}: " + _clauses(f"no {kind} plugin named '{name}'", _suggest(name, of_kind), installed)
    if info.kind != kind:
        return f"{where}: '{name}' is a {info.kind} plugin, not a {kind}; installed {kind}s: {', '.join(of_kind)}"
    return None


def _output_problem(output: OutputSection) -> str | None:
    """Only what is wrong whatever the command; whether the folder may be used is `adapt run`'s decision
    (adapt.run.rundir: a lock, resume or replace)."""
    target = Path(output.dir)
    try:
        if target.exists() and not target.is_dir():
            return f"output.dir: '{target}' exists and is not a directory"
    except OSError as exc:  # a name too long for the file system, a component that is a file...
        return f"output.dir: cannot write the run into '{target}' ({exc.strerror or exc})"
    return None


def _data_file_problems(data: DataSection) -> list[str]:
    files = [(f"data.{key}", getattr(data, key), tuple(FILE_BUILDERS)) for key in ("train_file", "eval_file")]
    if data.preprocess is not None:
        files.append(("data.preprocess", data.preprocess.rpartition(":")[0], ()))
    problems = (file_problem(path, key, suffixes) for key, path, suffixes in files if path is not None)
    return [problem for problem in problems if problem]


def validate(
    raw: dict[str, Any],
    plugins: Mapping[str, PluginInfo],
    problems: list[str],
    *,
    source: str,
    broken: Mapping[str, str],
    check_data: bool = True,
    notes: list[str] | None = None,
) -> Recipe | None:
    """Validate everything that can be checked without loading a model or data; append to `problems`."""
    for key in raw:
        if key not in TOP_LEVEL:
            valid = f"valid tables: {', '.join(TOP_LEVEL)}"
            problems.append(f"[{toml_key(key)}]: " + _clauses("unknown table", _suggest(key, TOP_LEVEL), valid))

    core = {}
    for name, model in CORE_SECTIONS.items():
        if name not in raw:
            if name in REQUIRED_SECTIONS:
                problems.append(f"[{name}]: required table is missing")
            continue
        core[name] = _check_table(name, model, raw[name], problems)

    tables: dict[str, Table] = {}
    task = core.get("task")
    head = task.head if isinstance(task, TaskSection) else None
    if head is not None:
        problem = _plugin_name_problem("task.head", head, "head", plugins, broken)
        if problem:
            problems.append(problem)
            head = None
        else:
            table = _check_table("task", plugins[head].table, raw["task"], problems, drop=("head",))
            if table is not None:
                tables[head] = table

    raw_methods = raw.get("methods", {})
    methods: list[str] = []
    if not isinstance(raw_methods, dict):
        problems.append(f"methods: expected tables like [methods.lora], got {raw_methods!r}")
        raw_methods = {}
    if not raw_methods:
        known = sorted(n for n, i in plugins.items() if i.kind == "method")
        problems.append(
            f"[methods]: name at least one method table, e.g. [methods.lora]; installed: {', '.join(known)}"
        )
    for name, value in raw_methods.items():
        problem = _plugin_name_problem(f"methods.{toml_key(name)}", name, "method", plugins, broken)
        if problem:
            problems.append(problem)
            continue
        methods.append(name)
        table = _check_table(f"methods.{name}", plugins[name].table, value, problems)
        if table is not None:
            tables[name] = table
    problems.extend(composition_problems(methods, plugins))

    section = _check_table("plugins", PluginsSection, raw.get("plugins", {}), problems)
    disabled = tuple(section.disable) if section else ()
    infra = {n for n, i in plugins.items() if i.kind == "infrastructure"}
    extra = section.model_extra if section else {}
    if notes is not None:  # a saved recipe: infrastructure that has since been uninstalled is not needed
        gone = sorted({n for n in [*disabled, *(extra or {})] if n not in plugins})
        if gone:
            notes.append(f"the saved recipe's [plugins] names plugins no longer installed, left out: {', '.join(gone)}")
            disabled = tuple(n for n in disabled if n not in gone)
            extra = {n: v for n, v in (extra or {}).items() if n not in gone}
    for name in disabled:
        if name not in infra:
            problems.append(
                "plugins.disable: "
                + _clauses(
                    f"'{name}' is not an infrastructure plugin",
                    _suggest(name, sorted(infra)),
                    f"infrastructure plugins: {', '.join(sorted(infra))}",
                )
            )
    for name in extra or {}:
        if name not in infra:
            problems.append(
                f"plugins.{toml_key(name)}: "
                + _clauses(f"no infrastructure plugin named '{name}'", _suggest(name, sorted(infra)))
            )
    opted_in = tuple(sorted(n for n in infra - set(disabled) if plugins[n].opt_in and n in (extra or {})))
    for name in sorted(infra - set(disabled)):
        if plugins[name].opt_in and name not in opted_in:
            continue  # takes part only in runs whose recipe has its [plugins.NAME] table
        table = _check_table(f"plugins.{name}", plugins[name].table, (extra or {}).get(name), problems)
        if table is not None:
            tables[name] = table

    data, output = core.get("data"), core.get("output")
    if isinstance(data, DataSection):
        if check_data:
            problems.extend(_data_file_problems(data))
    if isinstance(output, OutputSection):
        problem = _output_problem(output)
        if problem:
            problems.append(problem)

    if problems:
        return None
    return Recipe(
        source=source,
        model=core["model"],
        data=core["data"],
        train=core.get("train") or TrainSection(),
        output=core["output"],
        head=head,
        methods=tuple(order_methods(methods, plugins)),
        disabled=disabled,
        tables=tables,
        opted_in=opted_in,
    )
