"""`adapt run | check | plan | sweep | compare | eval | predict | export | plugins`.

Errors meant for users print as one message, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from rich.text import Text

from adapt import __version__
from adapt.commands.console import stderr
from adapt.errors import AdaptError, PluginError
from adapt.run.interrupts import Interrupted
from adapt.run.rundir import LATEST


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
    _trust_option(p, preprocess=False)
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
        help="what to vary and how: metric, sampler (tpe, random, grid), pruner and [params] (docs/sweeps.md)",
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
    p.add_argument("--question", help="a question to answer from --context (extractive-qa runs)")
    p.add_argument("--context", help="the text that holds --question's answer")
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
    p.add_argument(
        "variant", nargs="?", metavar="VARIANT", help="one of the plugin's variants (a PEFT method): its options"
    )
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


def _trust_option(p: argparse.ArgumentParser, preprocess: bool = True) -> None:
    if preprocess:
        p.add_argument(
            "--trust-preprocess",
            action="store_true",
            help="run the data.preprocess code that the run's recipe names (a run directory runs no code unasked)",
        )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load a model whose run recipe sets model.trust_remote_code (its folder's or hub repository's own "
        "Python code runs; a run directory runs no code unasked)",
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








































# command -> (module, function): imported when the command runs, so `adapt --help` imports neither torch nor rich
COMMANDS = {
    "run": ("training", "cmd_run"),
    "check": ("training", "cmd_check"),
    "plan": ("training", "cmd_plan"),
    "sweep": ("studies", "cmd_sweep"),
    "compare": ("studies", "cmd_compare"),
    "eval": ("runs", "cmd_eval"),
    "predict": ("runs", "cmd_predict"),
    "export": ("runs", "cmd_export"),
    "plugins": ("plugins", "cmd_plugins"),
    "new-plugin": ("plugins", "cmd_new_plugin"),
}


def entry(argv: Sequence[str] | None = None) -> None:
    """The `adapt` command and `python -m adapt`: `main`, then exit with its code. A process stopped by a signal
    exits even where a library left a thread behind that would keep the interpreter waiting at shutdown."""
    code = main(argv)
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        stragglers = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
        if stragglers:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # every file adapt writes is already in place (atomic writes, the run's marker)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse stops filling `predict`'s TEXT list at the first option; texts after it come back here.
        if args.command != "predict" or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.texts = [*args.texts, *extra]
    try:
        module, function = COMMANDS[args.command]
        return getattr(importlib.import_module(f"adapt.commands.{module}"), function)(args)
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
    entry()
