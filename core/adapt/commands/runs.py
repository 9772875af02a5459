"""`adapt eval`, `adapt predict` and `adapt export`: commands on a finished run directory."""

from __future__ import annotations

import argparse
import json

from rich.table import Table as RichTable
from rich.text import Text

from adapt.commands.console import quiet_libraries, short, stdout
from adapt.errors import UsageError


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.plugin.manager import Catalogue
    from adapt.train.evaluation import evaluate_run

    quiet_libraries()
    metrics = evaluate_run(
        Path(args.run_dir),
        Catalogue.discover(),
        args.overrides,
        data_file=args.data,
        trust_preprocess=args.trust_preprocess,
        trust_remote_code=args.trust_remote_code,
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

    from adapt.commands.predict import predict_run
    from adapt.plugin.manager import Catalogue

    if (args.question is None) != (args.context is None):
        raise UsageError("predict: --question and --context go together: the question, and the text holding its answer")
    given = [] if args.question is None else [{"question": args.question, "context": args.context}]
    quiet_libraries()
    predictions = predict_run(
        Path(args.run_dir),
        args.texts,
        args.file,
        Catalogue.discover(),
        args.overrides,
        trust_preprocess=args.trust_preprocess,
        trust_remote_code=args.trust_remote_code,
        given_rows=given,
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
            value = " ".join(short(v) for v in value)
        elif isinstance(value, dict):
            value = "  ".join(f"{k} {short(v)}" for k, v in value.items())
        text.append(f"{key}: ", style="bold" if key != "text" else "dim")
        text.append(f"{short(value)}\n")
    return text


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.commands.export import export_run
    from adapt.plugin.manager import Catalogue

    quiet_libraries()
    record = export_run(
        Path(args.run_dir),
        Path(args.out),
        Catalogue.discover(),
        merge=args.merge,
        atol=args.atol,
        overrides=args.overrides,
        check_examples=args.check_examples,
        trust_preprocess=args.trust_preprocess,
        trust_remote_code=args.trust_remote_code,
    )
    stdout.print(f"exported {args.run_dir} to {args.out} ({'merged' if args.merge else 'not merged'})")
    if "check" in record:
        check = record["check"]
        stdout.print(
            f"check on {check['examples']} eval examples: max |logit difference| {check['max_abs_logit_diff']:.3g} "
            f"(atol {check['atol']:g}), top-1 agreement {check['top1_agreement']:.4f}"
        )
    return 0
