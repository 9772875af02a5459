"""`adapt sweep` and `adapt compare`: many runs of one recipe, shown as tables (the studies themselves are in
adapt.commands.sweep and adapt.commands.compare)."""

from __future__ import annotations

import argparse

from rich.table import Table as RichTable
from rich.text import Text

from adapt.commands.console import load_args, quiet_libraries, short, stderr, stdout
from adapt.run.interrupts import Interrupted

SHOWN_WHILE_RUNNING = 20  # latest trials in the table printed after each trial


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.commands.sweep import Sweep
    from adapt.recipe.space import load_space

    catalogue, recipe = load_args(args)
    space = load_space(args.space, args.recipe, catalogue.infos, args.overrides, catalogue.broken)
    quiet_libraries()
    folder = Path(args.dir or f"{recipe.output.dir}-sweep")
    sweep = Sweep(
        args.recipe,
        space,
        catalogue,
        folder,
        study_name=args.study or Path(args.recipe).stem,
        storage=args.storage,
        overrides=args.overrides,
        on_trial=lambda study: stdout.print(_trials_table(study, space, latest=SHOWN_WHILE_RUNNING)),
    )
    if space.pruner.kind != "none" and not recipe.train.eval_every:
        from adapt.run.report import show_notes

        show_notes(["no pruning: the recipe does not evaluate during training (set train.eval_every)"])
    try:
        study = sweep.run(args.trials)
    except Interrupted as exc:
        again = "sweep interrupted: run the same command again to continue the study"
        raise Interrupted(exc.signum, f"{exc.message}\n{again}") from exc
    from adapt.commands.sweep import best_trial

    if len(study.trials) > SHOWN_WHILE_RUNNING or not sweep.trials_run:  # else the last table showed them all
        stdout.print(_trials_table(study, space))

    best = best_trial(study)
    if best is None:
        stderr.print(Text(f"no trial completed; see {folder / 'trials.json'}", style="red"))
        return 1
    stdout.print(
        f"best: trial {best.number}, {space.metric} {best.value:.4f} ({_params_text(best.params)})\n"
        f"written: {folder / 'best.toml'}, {folder / 'trials.json'}, {folder / 'objective.png'}"
    )
    return 0


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in params.items())


def _trials_table(study, space, latest: int | None = None) -> RichTable:
    from adapt.commands.sweep import best_trial, trial_rows

    rows = trial_rows(study)
    best = best_trial(study)
    shown = rows[-latest:] if latest else rows
    caption = f"{len(rows) - len(shown)} earlier trials in trials.json" if len(shown) < len(rows) else None
    table = RichTable(title=f"study {study.study_name}: {space.metric} ({space.goal})", caption=caption)
    for column in ("trial", "state", space.metric, *_short_keys(list(space.params)), "steps", "train s", "note"):
        if column == "note":
            table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=48)
        else:
            table.add_column(column, justify="left" if column == "state" else "right", overflow="fold")
    for row in shown:
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        style = "bold green" if best is not None and row["number"] == best.number else None
        params = [short(row["params"].get(k, "")) for k in space.params]
        table.add_row(
            str(row["number"]),
            row["state"],
            value,
            *params,
            str(row["steps"] or ""),
            str(row["train_seconds"] or ""),
            row["note"][:80],
            style=style,
        )
    return table


def _short_keys(keys: list[str]) -> list[str]:
    """Column titles: each key's last part ("learning_rate") where that names one key, else the whole key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [short if last.count(short) == 1 else key for key, short in zip(keys, last, strict=True)]


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.commands.compare import Comparison, parse_vary

    key, values = parse_vary(args.vary)
    catalogue, recipe = load_args(args)
    quiet_libraries()
    folder = Path(args.dir or f"{recipe.output.dir}-compare")
    comparison = Comparison(args.recipe, key, values, catalogue, folder, overrides=args.overrides, metric=args.metric)
    try:
        rows = comparison.run()
    except Interrupted as exc:
        again = "comparison interrupted: run the same command again to continue"
        raise Interrupted(exc.signum, f"{exc.message}\n{again}") from exc
    metric = comparison.chart_metric(rows)
    names = list(dict.fromkeys(m for r in rows for m in r["eval"]))
    problems = [r for r in rows if r["status"] != "finished"]
    table = RichTable(title=f"{recipe.source}: {key} compared")
    title = _short_keys([key])[0]
    for column in (title, *names, "trainable", "train s", "samples/s", "peak MiB"):
        table.add_column(column, justify="left" if column == title else "right", overflow="fold")
    if problems:
        table.add_column("status", overflow="fold")
    for row in rows:
        peak = row.get("measured_peak_bytes")
        cells = [
            short(row["value"]),
            *(f"{row['eval'][m]:.4f}" if m in row["eval"] else "" for m in names),
            f"{row['trainable']:,}" if row.get("trainable") else "",
            f"{row['train_seconds']:.0f}" if row.get("train_seconds") else "",
            f"{row['train_samples_per_second']:.0f}" if row.get("train_samples_per_second") else "",
            f"{peak / 2**20:,.0f}" if peak else "",
        ]
        if problems:
            cells.append(row["status"] if row["status"] != "failed" else f"failed: {row['error']}")
        table.add_row(*cells)
    stdout.print(table)
    stdout.print(f"written: {folder / 'compare.json'}" + (f", {folder / 'compare.png'}" if metric else ""))
    return 0 if any(r["status"] == "finished" for r in rows) else 1
