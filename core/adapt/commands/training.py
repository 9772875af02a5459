"""`adapt run`, `adapt check` and `adapt plan`: a recipe trained, validated and built, or its memory planned."""

from __future__ import annotations

import argparse

from rich.table import Table as RichTable

from adapt.commands.console import load_args, quiet_libraries, stdout


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.recipe.loader import output_override

    saved = Path(args.recipe).is_dir()
    if saved:  # a run directory: its recipe as run, and the folder as it is named now
        args.recipe = str(Path(args.recipe) / "recipe.toml")
        args.overrides = [output_override(Path(args.recipe).parent), *args.overrides]
    catalogue, recipe = load_args(args, saved=saved)
    if saved:
        from adapt.run.restore import refuse_untrusted_model_code

        refuse_untrusted_model_code(recipe, Path(args.recipe).parent, args.trust_remote_code)
    quiet_libraries()
    from adapt.train.orchestration import run_recipe

    run_recipe(recipe, catalogue, resume=args.resume, ignore_plan=args.ignore_plan)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    catalogue, recipe = load_args(args)
    quiet_libraries()
    from adapt.model.build import build_model, start_run

    stdout.print(f"recipe {recipe.source}: valid (head {recipe.head}, methods {', '.join(recipe.methods)})")
    run, hooks = start_run(recipe, catalogue)
    stdout.print(f"data: {len(run.dataset['train']):,} train rows, {len(run.dataset['eval']):,} eval rows")
    table = RichTable(title=f"parameters of {recipe.model.name}")
    for column in ("after", "trainable", "total", "trainable %"):
        table.add_column(column, justify="left" if column == "after" else "right")
    for count in build_model(run, hooks):
        share = 100 * count.trainable / max(count.total, 1)
        table.add_row(count.stage, f"{count.trainable:,}", f"{count.total:,}", f"{share:.3f}")
    stdout.print(table)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    catalogue, recipe = load_args(args)
    quiet_libraries()
    from adapt.io import json_text
    from adapt.plan.device import parse_device
    from adapt.plan.planner import make_plan
    from adapt.plan.render import render_plan

    plan = make_plan(recipe, catalogue, parse_device(args.device), config_path=args.model_config)
    if args.json:
        print(json_text(plan.to_json()))
    else:
        render_plan(plan, stdout)
    return 0
