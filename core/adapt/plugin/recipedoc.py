"""The recipe key reference (docs/recipe-keys.md), generated from the core's own tables and every built-in plugin's
`Table`, so that it cannot drift from what the recipe loader validates.

`python -m adapt.plugin.recipedoc > docs/recipe-keys.md` writes it again; a test fails when the file is stale.
Third-party plugins document their own tables (`adapt plugins NAME` prints any installed plugin's).
"""

from __future__ import annotations

from adapt.plugin.manager import Catalogue, is_builtin_distribution
from adapt.plugin.options import table_location, table_options
from adapt.recipe.optimizers import OPTIONS
from adapt.recipe.sections import DataSection, ModelSection, OutputSection, PluginsSection, TaskSection, TrainSection
from adapt.types import Table

HEADER = """\
# Recipe key reference

Generated from the core's recipe tables (`core/adapt/recipe/sections.py`, `core/adapt/recipe/optimizers.py`) and
each built-in plugin's `Table` by `python -m adapt.plugin.recipedoc > docs/recipe-keys.md`; do not edit by hand.
`adapt plugins NAME` prints the same for any installed plugin, third-party ones included. Unknown keys are errors
(with a did-you-mean), numbers must be finite, and every problem of a recipe is reported at once.
"""

CORE = {
    "[model]": ModelSection,
    "[data]": DataSection,
    "[task]": TaskSection,
    "[train]": TrainSection,
    "[output]": OutputSection,
    "[plugins]": PluginsSection,
}
KIND_TITLES = {"head": "Heads", "method": "Methods", "infrastructure": "Infrastructure plugins"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: type[Table]) -> str:
    options = table_options(table)
    if not options:
        return "No options.\n"
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for option in options:
        kind = option["type"] + (f" ({option['bounds']})" if option["bounds"] else "")
        cells = (f"`{option['key']}`", kind, option["default"], option["description"])
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def render(catalogue: Catalogue | None = None) -> str:
    catalogue = catalogue or Catalogue.discover()
    parts = [HEADER, "## The core's tables\n"]
    for title, table in CORE.items():
        doc = (table.__doc__ or "").strip()
        parts += [f"### `{title}`\n", *([doc + "\n"] if doc else []), table_markdown(table)]
    parts.append("### `[train.optimizer_options]`\n")
    parts.append("The options of the optimizer `train.optimizer` names, validated against it.\n")
    for name, table in OPTIONS.items():
        parts += [f"#### `optimizer = \"{name}\"`\n", table_markdown(table)]
    builtins = [e for e in catalogue.entries.values() if is_builtin_distribution(e.distribution)]
    for kind, heading in KIND_TITLES.items():
        parts.append(f"## {heading}\n")
        for entry in sorted((e for e in builtins if e.info.kind == kind), key=lambda e: e.name):
            parts.append(f"### `{entry.name}`: `{table_location(entry.name, entry.info)}`\n")
            parts += [entry.info.summary.strip() + "\n", table_markdown(entry.info.table)]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
