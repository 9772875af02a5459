"""`adapt run | check | plan | sweep | compare | eval | predict | export | plugins`.

Errors meant for users print as one message, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from adapt import __version__
from adapt.errors import AdaptError, PluginError
from adapt.interrupts import Interrupted
from adapt.rundir import LATEST

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adapt", description="Parameter-efficient adaptation of pretrained transformers."
    )
    parser.add_argument("--version", action="version", version=f"adapt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, target: str, target_help: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(target, help=target_help)
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"override a recipe value, e.g. --set {example} (repeatable)",
        )
        p.add_argument("--traceback", action="store_true", help="show the full traceback of a plugin error")
        return p

    recipe = ("recipe", "a recipe file (TOML)", "train.learning_rate=1e-3")
    p = command(
        "run",
        "train, evaluate and save a recipe's run",
        "recipe",
        "a recipe file (TOML), or a run directory to continue with --resume",
        "train.learning_rate=1e-3",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=LATEST,
        metavar="CHECKPOINT",
        help="continue the run in output.dir from its newest complete checkpoint (or from CHECKPOINT, a "
        "checkpoints/step-N folder); a finished run is left as it is, and with nothing to resume a new run starts",
    )
    p.add_argument(
        "--ignore-plan",
        action="store_true",
        help="start on a GPU even when the memory plan says the run does not fit",
    )
    command("check", "validate a recipe, build its model and show trainable parameters per method", *recipe)
    p = command(
        "plan",
        "estimate a recipe's training memory before loading any weights: fits or not, and what to change",
        *recipe,
    )
    p.add_argument(
        "--device",
        metavar="DEVICE",
        help="cpu (this machine's free memory), cuda (this machine's GPU) or a GPU's memory such as 24GiB; "
        "default: cuda where there is one, else cpu",
    )
    p.add_argument(
        "--model-config",
        metavar="PATH",
        help="the model's config.json (or its folder), for a model whose files are not in the cache",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command(
        "sweep",
        "search a recipe's hyperparameters with Optuna: each trial a run, pruned from its evaluations, resumable",
        *recipe,
    )
    p.add_argument(
        "--space",
        required=True,
        metavar="SPACE.toml",
        help="what to vary and how: metric, sampler (tpe, random, grid), pruner and [params] (see README)",
    )
    p.add_argument(
        "--trials", type=_positive(int), metavar="N", help="trials in the study in all, every worker counting"
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="where the study lives: a journal file (default DIR/study.journal) or sqlite:///FILE, "
        "postgresql://..., mysql://...; workers given the same storage and --study share the study",
    )
    p.add_argument("--study", metavar="NAME", help="the study's name (default: the recipe file's stem)")
    p.add_argument("--dir", metavar="DIR", help="the folder of trials and results (default: output.dir + '-sweep')")
    p = command(
        "compare",
        "run a recipe once per value of one key (models, methods, ranks) and compare their metrics",
        *recipe,
    )
    p.add_argument(
        "--vary",
        required=True,
        metavar="KEY=A,B,C",
        help="the key and its values, e.g. --vary model.name=prajjwal1/bert-tiny,prajjwal1/bert-mini",
    )
    p.add_argument("--metric", help="the eval metric the chart shows (default: the head's first)")
    p.add_argument("--dir", metavar="DIR", help="the folder of runs and results (default: output.dir + '-compare')")
    p = command(
        "eval",
        "recompute a finished run's metrics on its eval split (or another)",
        "run_dir",
        "a run directory written by `adapt run`",
        "data.eval_file=test.tsv",
    )
    p.add_argument("--data", metavar="FILE", help="evaluate on this file (same columns as the recipe's data)")
    _trust_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    run_dir = ("run_dir", "a run directory written by `adapt run`", "data.max_length=128")
    p = command("predict", "predict with a finished run: labels with scores, tags per word, generated text", *run_dir)
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to predict for")
    _trust_option(p)
    p.add_argument(
        "--file", help="a .jsonl/.csv/.tsv/.parquet file with the columns of the recipe's data (preprocessed alike)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = command("export", "write a finished run as a Hugging Face model folder", *run_dir)
    p.add_argument("out", metavar="OUT", help="the folder to create")
    _trust_option(p)
    p.add_argument("--merge", action="store_true", help="merge LoRA into the base weights (a plain transformers model)")
    p.add_argument(
        "--atol",
        type=_positive(float),
        help="largest logit difference a merged export may show against the run "
        "(default 1e-3; 0.25 for an 8-bit base, whose activations the run also quantised)",
    )
    p.add_argument(
        "--check-examples",
        type=_positive(int),
        default=64,
        metavar="N",
        help="eval examples the merge check compares (64)",
    )
    p = sub.add_parser(
        "plugins", help="list installed plugins and the hooks they implement; with NAME, that plugin's options"
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="one plugin: its recipe table (keys, types, defaults)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser(
        "new-plugin",
        help="write a plugin package (pyproject, module, tests) that installs and passes its own tests",
        description="Write the package adapt-NAME: a working plugin of that kind to start from, its entry point, "
        "and tests that use adapt.testing. Then: cd adapt-NAME && pip install -e '.[test]' && pytest",
    )
    p.add_argument("name", metavar="NAME", help="the plugin's name in recipes, e.g. bias-only")
    p.add_argument("--kind", required=True, choices=["method", "head", "infrastructure"], help="what it is")
    p.add_argument("--dir", default=".", metavar="PARENT", help="where to create adapt-NAME (the current folder)")
    return parser


def _trust_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-preprocess",
        action="store_true",
        help="run the data.preprocess code that the run's recipe names (a run directory runs no code unasked)",
    )


def _positive(kind: type) -> Callable[[str], float]:
    """An argparse type: a number of `kind` above zero."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def _quiet_libraries() -> None:
    """The libraries' own progress bars and load reports would drown the run's progress display."""
    if os.environ.get("ADAPT_VERBOSE"):
        return
    import logging
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    # bitsandbytes warns on import, on CPUs with AVX512, that an optional kernel package is not installed.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def _load(args: argparse.Namespace, saved: bool = False):
    """The catalogue and the validated recipe; `saved`: the recipe a run directory holds (lenient about
    infrastructure plugins uninstalled since)."""
    from adapt.manager import Catalogue
    from adapt.recipe import load_recipe
    from adapt.report import show_notes

    catalogue = Catalogue.discover()
    for name, error in catalogue.broken.items():
        stderr.print(
            Text(f"warning: plugin '{name}' is broken and takes no part: {error}", style="yellow"), soft_wrap=True
        )
    notes: list[str] | None = [] if saved else None
    recipe = load_recipe(args.recipe, catalogue.infos, args.overrides, broken=catalogue.broken, notes=notes)
    show_notes(notes or [])
    return catalogue, recipe


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.recipe import output_override

    saved = Path(args.recipe).is_dir()
    if saved:  # a run directory: its recipe as run, and the folder as it is named now
        args.recipe = str(Path(args.recipe) / "recipe.toml")
        args.overrides = [output_override(Path(args.recipe).parent), *args.overrides]
    catalogue, recipe = _load(args, saved=saved)
    _quiet_libraries()
    from adapt.trainer import run_recipe

    run_recipe(recipe, catalogue, resume=args.resume, ignore_plan=args.ignore_plan)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    catalogue, recipe = _load(args)
    _quiet_libraries()
    from adapt.build import build_model, start_run

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
    catalogue, recipe = _load(args)
    _quiet_libraries()
    from adapt.io import json_text
    from adapt.plan import make_plan, parse_device, render_plan

    plan = make_plan(recipe, catalogue, parse_device(args.device), config_path=args.model_config)
    if args.json:
        print(json_text(plan.to_json()))
    else:
        render_plan(plan, stdout)
    return 0


SHOWN_WHILE_RUNNING = 20  # latest trials in the table printed after each trial


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.space import load_space
    from adapt.sweep import Sweep

    catalogue, recipe = _load(args)
    space = load_space(args.space, args.recipe, catalogue.infos, args.overrides, catalogue.broken)
    _quiet_libraries()
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
        from adapt.report import show_notes

        show_notes(["no pruning: the recipe does not evaluate during training (set train.eval_every)"])
    try:
        study = sweep.run(args.trials)
    except Interrupted as exc:
        again = "sweep interrupted: run the same command again to continue the study"
        raise Interrupted(exc.signum, f"{exc.message}\n{again}") from exc
    from adapt.sweep import best_trial

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
    return ", ".join(f"{k}={_short(v)}" for k, v in params.items())


def _trials_table(study, space, latest: int | None = None) -> RichTable:
    from adapt.sweep import best_trial, trial_rows

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
        params = [_short(row["params"].get(k, "")) for k in space.params]
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

    from adapt.compare import Comparison, parse_vary

    key, values = parse_vary(args.vary)
    catalogue, recipe = _load(args)
    _quiet_libraries()
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
            _short(row["value"]),
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


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.evaluation import evaluate_run
    from adapt.manager import Catalogue

    _quiet_libraries()
    metrics = evaluate_run(
        Path(args.run_dir),
        Catalogue.discover(),
        args.overrides,
        data_file=args.data,
        trust_preprocess=args.trust_preprocess,
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    table = RichTable(title=f"eval of {args.run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    stdout.print(table)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.manager import Catalogue
    from adapt.prediction import predict_run

    _quiet_libraries()
    predictions = predict_run(
        Path(args.run_dir),
        args.texts,
        args.file,
        Catalogue.discover(),
        args.overrides,
        trust_preprocess=args.trust_preprocess,
    )
    for prediction in predictions:
        if args.json:
            print(json.dumps(prediction, ensure_ascii=False))
        else:
            stdout.print(_describe(prediction))
    return 0


def _describe(prediction: dict) -> Text:
    """One prediction for people: the input on its own line, then each field (lists joined by spaces)."""
    text = Text()
    for key, value in prediction.items():
        if isinstance(value, list):
            value = " ".join(_short(v) for v in value)
        elif isinstance(value, dict):
            value = "  ".join(f"{k} {_short(v)}" for k, v in value.items())
        text.append(f"{key}: ", style="bold" if key != "text" else "dim")
        text.append(f"{_short(value)}\n")
    return text


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):  # an item of a list, e.g. an entity: its first field, then the others
        first, *rest = (_short(v) for v in value.values())
        return f"{first} ({' '.join(rest)})" if rest else first
    return str(value)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.export import export_run
    from adapt.manager import Catalogue

    _quiet_libraries()
    record = export_run(
        Path(args.run_dir),
        Path(args.out),
        Catalogue.discover(),
        merge=args.merge,
        atol=args.atol,
        overrides=args.overrides,
        check_examples=args.check_examples,
        trust_preprocess=args.trust_preprocess,
    )
    stdout.print(f"exported {args.run_dir} to {args.out} ({'merged' if args.merge else 'not merged'})")
    if "check" in record:
        check = record["check"]
        stdout.print(
            f"check on {check['examples']} eval examples: max |logit difference| {check['max_abs_logit_diff']:.3g} "
            f"(atol {check['atol']:g}), top-1 agreement {check['top1_agreement']:.4f}"
        )
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from adapt.manager import Catalogue

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
    from adapt.options import table_location, table_options

    name = args.name
    if name in catalogue.broken:
        raise UsageError(f"plugin '{name}' is installed but broken: {catalogue.broken[name]}")
    if name not in rows:
        close = difflib.get_close_matches(name, list(rows), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"no plugin named '{name}'{hint} (installed: {', '.join(sorted(rows))})")
    info = catalogue.entries[name].info
    row = {
        **rows[name],
        "table": table_location(name, info),
        "options": table_options(info.table),
        "after": list(info.after),
        "conflicts": dict(info.conflicts),
        "needs_one_of": list(info.needs_one_of),
    }
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    source = f"{row['distribution']} {row['version']} ({row['origin']})" if row["distribution"] else row["origin"]
    stdout.print(Text(f"{name}: {row['summary']}", style="bold"))
    stdout.print(f"{row['kind']} from {source}; hooks: {', '.join(h.removeprefix('adapt_') for h in row['hooks'])}")
    for label, value in (("applied after", row["after"]), ("needs one of", row["needs_one_of"])):
        if value:
            stdout.print(f"{label}: {', '.join(value)}")
    for other, why in row["conflicts"].items():
        stdout.print(f"conflicts with {other}: {why}")
    if not row["options"]:
        stdout.print("no options")
        return 0
    table = RichTable(title=Text(row["table"]), title_justify="left")  # Text: "[task]" is not markup
    for column in ("key", "type", "default", "description"):
        table.add_column(column, overflow="fold", style="bold" if column == "key" else None)
    for option in row["options"]:
        bounds = f" ({option['bounds']})" if option["bounds"] else ""
        cells = (option["key"], option["type"] + bounds, option["default"], option["description"])
        table.add_row(*map(Text, cells))
    stdout.print(table)
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.scaffold import new_plugin

    folder = new_plugin(args.name, args.kind, Path(args.dir))
    print(f"wrote {folder}/ (a {args.kind} plugin named '{args.name}'); next:")
    print(f"  cd {folder} && pip install -e '.[test]' && pytest")
    return 0


COMMANDS = {
    "run": cmd_run,
    "check": cmd_check,
    "plan": cmd_plan,
    "sweep": cmd_sweep,
    "compare": cmd_compare,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "export": cmd_export,
    "plugins": cmd_plugins,
    "new-plugin": cmd_new_plugin,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse stops filling `predict`'s TEXT list at the first option; texts after it come back here.
        if args.command != "predict" or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.texts = [*args.texts, *extra]
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `adapt plugins --json | head -1`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except AdaptError as exc:
        if isinstance(exc, PluginError) and getattr(args, "traceback", False):
            raise
        stderr.print(Text("error: ", style="bold red") + Text(str(exc)), soft_wrap=True)
        if isinstance(exc, PluginError):
            stderr.print("(run again with --traceback for the full traceback)", style="dim")
        return exc.exit_code
    except Interrupted as exc:
        stderr.print(Text(exc.message, style="yellow"), soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        stderr.print("interrupted", style="yellow")
        return 130


if __name__ == "__main__":
    sys.exit(main())
