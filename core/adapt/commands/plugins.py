"""`adapt plugins [NAME]` and `adapt new-plugin`: what is installed, each plugin's options, a new plugin package."""

from __future__ import annotations

import argparse
import json

from rich.table import Table as RichTable
from rich.text import Text

from adapt.commands.console import stderr, stdout


def cmd_plugins(args: argparse.Namespace) -> int:
    from adapt.plugin.manager import Catalogue

    catalogue = Catalogue.discover()
    pm = catalogue.listing_manager()
    rows = []
    for entry in catalogue.entries.values():
        hooks = sorted(c.name for c in pm.get_hookcallers(pm.get_plugin(entry.name)) or [])
        rows.append(
            {
                "name": entry.name,
                "kind": entry.info.kind,
                "summary": entry.info.summary,
                "version": entry.version,
                "distribution": entry.distribution,
                "origin": entry.origin,
                "module": entry.value,
                "requires_api": entry.info.requires_api,
                "hooks": hooks,
            }
        )
    broken = [{"name": n, "error": e} for n, e in catalogue.broken.items()]
    if args.name is not None:
        return _show_plugin(catalogue, {row["name"]: row for row in rows}, args)
    if args.json:
        print(json.dumps({"plugins": rows, "broken": broken}, indent=2))
        return 1 if broken else 0
    table = RichTable(title="adapt plugins", caption="hooks are shown without their adapt_ prefix")
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("kind", no_wrap=True)
    table.add_column("from")
    table.add_column("hooks", overflow="fold")
    for row in rows:
        source = f"{row['distribution']} {row['version']}" if row["distribution"] else ""
        source = f"{source} ({row['origin']})".strip()
        hooks = ", ".join(h.removeprefix("adapt_") for h in row["hooks"])
        table.add_row(row["name"], row["kind"], source, f"{row['summary']}\n[dim]{hooks}[/dim]")
    stdout.print(table)
    for item in broken:
        stderr.print(Text(f"broken plugin {item['name']}: {item['error']}", style="red"), soft_wrap=True)
    return 1 if broken else 0  # a broken plugin is a fault to fix, even if the others work


def _show_plugin(catalogue, rows: dict[str, dict], args: argparse.Namespace) -> int:
    """`adapt plugins NAME`: where the plugin's options go in a recipe, and each option."""
    import difflib

    from adapt.errors import UsageError
    from adapt.plugin.options import table_location, table_options

    name = args.name
    if name in catalogue.broken:
        raise UsageError(f"plugin '{name}' is installed but broken: {catalogue.broken[name]}")
    if name not in rows:
        close = difflib.get_close_matches(name, list(rows), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"no plugin named '{name}'{hint} (installed: {', '.join(sorted(rows))})")
    info = catalogue.entries[name].info
    if args.variant is not None:
        return _show_variant(name, info, args)
    row = {
        **rows[name],
        "table": table_location(name, info),
        "options": table_options(info.table),
        "provides": [str(c) for c in info.provides],
        "needs": [str(c) for c in info.needs],
        "runs_after": [str(c) for c in info.runs_after],
        "conflicts": {str(k): v for k, v in info.conflicts.items()},
        "after": list(info.after),  # deprecated since hook API 1.2
        "needs_one_of": list(info.needs_one_of),  # deprecated since hook API 1.2
        "variants": sorted(info.variants()) if info.variants else [],
    }
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    source = f"{row['distribution']} {row['version']} ({row['origin']})" if row["distribution"] else row["origin"]
    stdout.print(Text(f"{name}: {row['summary']}", style="bold"))
    stdout.print(f"{row['kind']} from {source}; hooks: {', '.join(h.removeprefix('adapt_') for h in row['hooks'])}")
    labels = (
        ("provides", row["provides"]),
        ("needs a method that provides one of", row["needs"]),
        ("applied after methods that provide", row["runs_after"]),
        ("applied after", row["after"]),
        ("needs one of", row["needs_one_of"]),
    )
    for label, value in labels:
        if value:
            stdout.print(f"{label}: {', '.join(value)}")
    for other, why in row["conflicts"].items():
        stdout.print(f"conflicts with {other}: {why}")
    if not row["options"]:
        stdout.print("no options")
        return 0
    _print_options(row["table"], row["options"])
    if row["variants"]:
        stdout.print(f"variants (adapt plugins {name} VARIANT: its options): {', '.join(row['variants'])}")
    return 0


def _show_variant(name: str, info, args: argparse.Namespace) -> int:
    """`adapt plugins NAME VARIANT`: the options one variant of the plugin brings (a PEFT method's)."""
    import difflib

    from adapt.errors import UsageError

    variants = info.variants() if info.variants else {}
    if args.variant not in variants:
        if not variants:
            raise UsageError(f"plugin '{name}' has no variants; adapt plugins {name} lists its options")
        close = difflib.get_close_matches(args.variant, list(variants), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"plugin '{name}' has no variant '{args.variant}'{hint} (it has: {', '.join(variants)})")
    options = [{"bounds": "", **row} for row in variants[args.variant]]
    if args.json:
        print(json.dumps({"name": name, "variant": args.variant, "options": options}, indent=2))
        return 0
    from adapt.plugin.options import table_location

    _print_options(f"{table_location(name, info)} with {args.variant}", options)
    return 0


def _print_options(title: str, options) -> None:
    table = RichTable(title=Text(title), title_justify="left")  # Text: "[task]" is not markup
    for column in ("key", "type", "default", "description"):
        table.add_column(column, overflow="fold", style="bold" if column == "key" else None)
    for option in options:
        bounds = f" ({option['bounds']})" if option["bounds"] else ""
        cells = (option["key"], option["type"] + bounds, option["default"], option["description"])
        table.add_row(*map(Text, cells))
    stdout.print(table)


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.plugin.scaffold import new_plugin

    folder = new_plugin(args.name, args.kind, Path(args.dir))
    print(f"wrote {folder}/ (a {args.kind} plugin named '{args.name}'); next:")
    print(f"  cd {folder} && pip install -e '.[test]' && pytest")
    return 0
