"""Bad input and file-system refusals end in one message naming the key or file, never a traceback, and
nothing non-finite passes into a recipe or out into a JSON file."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from adapt.commands.cli import main
from adapt.errors import RecipeError
from adapt.plugin.manager import Catalogue
from adapt.recipe.loader import load_recipe


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")


def test_numbers_in_a_recipe_must_be_finite(tiny_recipe):
    catalogue = Catalogue.discover()
    changes = {"train": {"learning_rate": math.inf, "epochs": math.nan}, "methods": {"lora": {"alpha": math.inf}}}
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe(**changes), catalogue.infos)
    problems = " | ".join(info.value.problems)
    for key in ("train.learning_rate", "train.epochs", "methods.lora.alpha"):
        assert f"{key}: Input should be a finite number" in problems, problems


def test_an_output_folder_the_file_system_refuses_is_one_message(tiny_recipe, tmp_path, capsys):
    too_long = tmp_path / ("x" * 300) / "run"
    assert main(["run", str(tiny_recipe(output={"dir": str(too_long)}))]) == 2
    err = capsys.readouterr().err
    assert "output.dir: cannot write the run into" in err and "File name too long" in err
    assert "Traceback" not in err
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    assert main(["run", str(tiny_recipe(output={"dir": str(tmp_path / "notes.txt" / "run")}))]) == 2
    err = capsys.readouterr().err
    assert "output.dir: cannot write the run into" in err and "Not a directory" in err


def test_json_files_stay_valid_when_a_value_is_not_finite(tmp_path):
    from adapt.io import atomic_write_json, json_text

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))

    path = atomic_write_json(tmp_path / "summary.json", {"eval": {"pearson": math.nan}, "list": [math.inf, 1.5]})
    assert strict(path.read_text()) == {"eval": {"pearson": None}, "list": [None, 1.5]}
    assert strict(json_text({"loss": -math.inf})) == {"loss": None}


def test_a_closed_pipe_is_not_a_traceback():
    command = f"{sys.executable} -m adapt plugins --json | head -1"
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "{" and "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_train_error_hook_hears_of_failures_after_training(tiny_recipe):
    from adapt.errors import PluginError
    from adapt.train.orchestration import run_recipe

    class Failing:
        errors: list[BaseException] = []

        def adapt_summary(self):
            raise ValueError("no summary today")

        def adapt_on_train_error(self, error):
            self.errors.append(error)

    plugin = Failing()
    catalogue = Catalogue.discover(extra={"failing": plugin})
    with pytest.raises(PluginError, match="plugin 'failing' failed in adapt_summary"):
        run_recipe(load_recipe(tiny_recipe(train={"epochs": 1}), catalogue.infos), catalogue)
    assert len(plugin.errors) == 1 and isinstance(plugin.errors[0], PluginError)


# --- plugin faults ----------------------------------------------------------------------------------------


def test_a_broken_installed_plugin_is_warned_about_and_fails_the_listing(install_fixture, adapt_cli, tiny_recipe):
    env = {"PYTHONPATH": str(install_fixture("adapt-broken")), "ADAPT_DISABLE_PLUGIN_AUTOLOAD": "0"}
    listing = adapt_cli("plugins", env=env)
    assert listing.returncode == 1 and "broken plugin broken: unknown hook 'adapt_on_stepend'" in listing.stderr
    run = adapt_cli("run", str(tiny_recipe(train={"max_steps": 2})), env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "warning: plugin 'broken' is broken and takes no part: unknown hook 'adapt_on_stepend'; did you mean" in (
        run.stderr
    )


def test_a_hook_parameter_that_is_never_passed_gets_a_suggestion():
    class Logger:
        def adapt_on_log(self, run, log):
            pass

    catalogue = Catalogue.discover(extra={"logger": Logger()})
    assert catalogue.broken["logger"] == (
        "adapt_on_log asks for 'log', which it is never passed (it passes: run, logs); did you mean 'logs'?"
    )


def test_a_table_with_aliases_round_trips_through_the_saved_recipe(tiny_recipe, tmp_path):
    import tomli_w
    from pydantic import Field

    from adapt import PluginInfo, Table

    class RegTable(Table):
        lam: float = Field(default=0.1, alias="lambda")

    class Reg:
        def adapt_plugin_info(self):
            return PluginInfo(kind="infrastructure", table=RegTable)

    catalogue = Catalogue.discover(extra={"reg": Reg()})
    recipe = load_recipe(tiny_recipe(plugins={"reg": {"lambda": 0.5}}), catalogue.infos)
    saved = tmp_path / "saved.toml"
    saved.write_text(tomli_w.dumps(recipe.to_dict()))
    assert load_recipe(saved, catalogue.infos).table("reg").lam == 0.5


def test_a_finished_run_outlives_its_infrastructure_plugins(tiny_recipe, tmp_path, adapt_with_crash, capsys):
    """The run's saved recipe names [plugins.crash]; crash is not installed in this process."""
    recipe = str(tiny_recipe(train={"epochs": 1}, plugins={"disable": ["crash"]}))
    assert adapt_with_crash("run", recipe, "--set", "plugins.crash.step=0").returncode == 0
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    captured = capsys.readouterr()
    assert "names plugins no longer installed, left out: crash" in captured.err
    assert json.loads(captured.out) == json.loads((tmp_path / "run" / "summary.json").read_text())["eval"]


def test_max_length_beyond_the_models_positions_is_refused_before_loading(tiny_recipe, capsys):
    assert main(["run", str(tiny_recipe(data={"max_length": 100}))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "data.max_length: 100 tokens, but" in err and "has 64 positions; use at most 64" in err


def test_a_loss_term_that_is_not_a_scalar_tensor_names_the_plugin(tiny_recipe, tmp_path):
    from adapt.errors import PluginError
    from adapt.train.orchestration import run_recipe

    class Regulariser:
        def __init__(self, value):
            self.value = value

        def adapt_loss_terms(self, outputs):
            return {"l2": self.value(outputs)}

    cases = ((lambda o: 0.5, "float"), (lambda o: o.logits.sum(0), "a tensor of shape (2,)"))
    for i, (value, described) in enumerate(cases):
        catalogue = Catalogue.discover(extra={"reg": Regulariser(value)})
        recipe = tiny_recipe(f"r{i}.toml", train={"epochs": 1}, output={"dir": str(tmp_path / f"run{i}")})
        with pytest.raises(PluginError) as info:
            run_recipe(load_recipe(recipe, catalogue.infos), catalogue)
        assert str(info.value) == (
            f"plugin 'reg' failed in adapt_loss_terms: TypeError: term 'l2' is {described}, not a scalar tensor"
        )


def test_two_distributions_claiming_one_name(install_fixture, adapt_cli):
    import os

    sites = os.pathsep.join(str(install_fixture(name)) for name in ("adapt-hello", "adapt-clash"))
    result = adapt_cli("plugins", "--json", env={"PYTHONPATH": sites, "ADAPT_DISABLE_PLUGIN_AUTOLOAD": "0"})
    assert result.returncode == 1
    listing = json.loads(result.stdout)
    plugins = {p["name"]: p for p in listing["plugins"]}
    broken = {b["name"]: b["error"] for b in listing["broken"]}
    assert plugins["lora"]["origin"] == "built-in"  # a built-in is never displaced
    assert "registers the plugin name 'lora', which is adapt's built-in" in broken["lora (from adapt-clash 0.0.1)"]
    assert "hello" not in plugins  # between two third-party packages, neither is chosen
    assert "adapt-hello 1.2.3" in broken["hello"] and "adapt-clash 0.0.1" in broken["hello"]


def test_a_run_directory_runs_its_preprocess_code_only_when_trusted(tiny_recipe, tmp_path, capsys):
    """A copied run directory brings its author's data.preprocess: eval, predict and export refuse to run it
    (exit 2, nothing executed) until --trust-preprocess says so."""
    ran = tmp_path / "preprocess-ran"
    tasks = tmp_path / "tasks.py"
    tasks.write_text(
        "from pathlib import Path\n"
        f"Path({str(ran)!r}).touch()  # importing it runs it\n"
        "def keep(row):\n    return {'sentence': row.get('sentence', row.get('text'))}\n"
    )
    recipe = tiny_recipe(data={"preprocess": f"{tasks}:keep"}, train={"epochs": 1})
    assert main(["run", str(recipe)]) == 0
    ran.unlink()
    run_dir = str(tmp_path / "run")
    commands = {
        "eval": ["eval", run_dir],
        "predict": ["predict", run_dir, "w1 good w2"],
        "export": ["export", run_dir, str(tmp_path / "export")],
    }
    for args in commands.values():
        capsys.readouterr()
        assert main(args) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"data.preprocess = '{tasks}:keep'" in err and "--trust-preprocess" in err
        assert not ran.exists()  # refused before importing the file
    assert main([*commands["eval"], "--trust-preprocess"]) == 0 and ran.exists()
    assert main([*commands["predict"], "--trust-preprocess"]) == 0


# --- data that would silently change the task --------------------------------------------------------------


def _tsv(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))
    return path


@pytest.mark.parametrize("kind", ["ids", "names"])
def test_a_label_only_in_the_eval_file_is_refused_naming_it(kind, tiny_recipe, toy, tmp_path, capsys):
    labels = {0: "neg", 1: "pos", 2: "meh"} if kind == "names" else {0: 0, 1: 1, 2: 2}
    train = _tsv(tmp_path / "train.tsv", [(t, labels[y]) for t, y in toy.rows(64, seed=1)])
    rows = [(t, labels[y]) for t, y in toy.rows(16, seed=2)]
    evaluation = _tsv(tmp_path / "dev.tsv", [*rows[:5], ("w1 w2 odd", labels[2]), *rows[5:]])
    recipe = tiny_recipe(data={"train_file": str(train), "eval_file": str(evaluation)}, train={"epochs": 1})
    assert main(["run", str(recipe)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"'{labels[2]}'" in err and "eval" in err and "row 6" in err and "training data" in err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_eval_on_a_file_with_a_label_the_run_never_saw_is_one_message(tiny_recipe, toy, tmp_path, capsys):
    assert main(["run", str(tiny_recipe(train={"epochs": 1}))]) == 0
    other = _tsv(tmp_path / "other.tsv", [("w1 good w2", 1), ("w3 awful", 7)])
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", str(other)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'7'" in err and "row 2" in err and "0, 1" in err


def _ner_run_with_fourth_row(tiny_recipe, toy_ner, tmp_path, fourth) -> int:
    """`adapt run` of the toy NER set whose training row 4 is `fourth(row 4 as it was)`; its exit code."""
    lines = toy_ner["train"].read_text().splitlines()
    lines[3] = json.dumps(fourth(json.loads(lines[3])))
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    recipe = tiny_recipe(
        data={"train_file": str(train), "eval_file": str(toy_ner["eval"])},
        task={"head": "token-classification", "tokens_column": "tokens", "tags_column": "ner_tags"},
        train={"epochs": 1},
    )
    return main(["run", str(recipe)])


def test_tokens_and_tags_of_different_lengths_are_refused_naming_the_row(tiny_recipe, toy_ner, tmp_path, capsys):
    rows = []

    def shorter_tags(row):
        rows.append(row)
        return {"tokens": row["tokens"], "ner_tags": row["ner_tags"][:-1]}

    assert _ner_run_with_fourth_row(tiny_recipe, toy_ner, tmp_path, shorter_tags) == 2
    (row,) = rows
    err = " ".join(capsys.readouterr().err.split())
    assert "row 4" in err and "train" in err and f"{len(row['tokens'])} tokens" in err
    assert f"{len(row['ner_tags']) - 1} tags" in err


def test_a_column_of_mixed_types_is_one_message_naming_the_file(tiny_recipe, toy_data, tmp_path, capsys):
    mixed = tmp_path / "train.jsonl"
    mixed.write_text('{"sentence": "w1 good", "label": 1}\n{"sentence": "w2 awful", "label": "negative"}\n')
    recipe = tiny_recipe(data={"train_file": str(mixed), "eval_file": str(toy_data["eval"])})
    assert main(["run", str(recipe)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "data.train_file" in err and str(mixed) in err


@pytest.mark.parametrize("content", ["", "sentence\tlabel\n"], ids=["empty", "header-only"])
def test_an_empty_data_file_is_one_message(content, tiny_recipe, toy_data, tmp_path, capsys):
    empty = tmp_path / "train.tsv"
    empty.write_text(content)
    assert main(["run", str(tiny_recipe(data={"train_file": str(empty), "eval_file": str(toy_data["eval"])}))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "data.train_file" in err and "no rows" in err


def test_a_run_whose_method_plugin_is_gone_names_the_distribution_to_install(tiny_recipe, tmp_path, capsys):
    assert main(["run", str(tiny_recipe(train={"epochs": 1}))]) == 0
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["plugins"]["lora"]["kind"] == "method"
    # as if the run had been trained with a method from a package that is not installed here
    summary["plugins"]["bias-only"] = {"kind": "method", "distribution": "adapt-bias", "version": "0.3.1"}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    recipe = (run_dir / "recipe.toml").read_text()
    (run_dir / "recipe.toml").write_text(recipe.replace("[methods.lora]", "[methods.bias-only]\n\n[methods.lora]"))
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'bias-only' (method) from adapt-bias 0.3.1: pip install 'adapt-bias==0.3.1'" in err


def test_too_little_free_space_for_checkpoints_and_artifacts_stops_before_loading(
    tiny_recipe, tmp_path, monkeypatch, capsys
):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))  # 1 MiB free
    assert main(["run", str(tiny_recipe(train={"epochs": 1}))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "output.dir: 1 MiB free" in err and "train.keep_checkpoints" in err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_read_only_output_folder_is_one_message_before_anything_loads(tiny_recipe, tmp_path, monkeypatch, capsys):
    """Simulated (the tests run as root, whom a read-only folder does not stop): the folder cannot be created."""
    import errno
    from pathlib import Path

    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self == tmp_path / "run":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(["run", str(tiny_recipe(train={"epochs": 1}))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"output.dir: cannot write the run into '{tmp_path / 'run'}' (Permission denied" in err


# --- what a hostile new user found (issue 31): each is one message and exit code 2 --------------------------------


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"train": {"learning_rate": True}}, "train.learning_rate: expected a number, got the boolean true"),
        ({"train": {"batch_size": False}}, "train.batch_size: expected a number, got the boolean false"),
        ({"methods": {"lora": {"alpha": True}}}, "methods.lora.alpha: expected a number, got the boolean true"),
        ({"train": {"seed": -1}}, "train.seed: Input should be greater than or equal to 0"),
        ({"train": {"seed": 99999999999999999999}}, "train.seed: Input should be less than or equal to 4294967295"),
        ({"train": {"epochs": 1e308}}, "train.epochs: Input should be less than or equal to 100000"),
        ({"task": {"label_names": ["a", "a"]}}, "task.label_names: each class needs a name of its own; repeated: 'a'"),
    ],
    ids=["bool-float", "bool-int-or-auto", "bool-plugin-table", "seed-negative", "seed-huge", "epochs-huge", "names"],
)
def test_values_that_would_train_something_else_are_refused(tiny_recipe, capsys, changes, problem):
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe(**changes), Catalogue.discover().infos)
    assert any(problem in p for p in info.value.problems), info.value.problems
    assert main(["check", str(tiny_recipe(**changes))]) == 2
    assert problem in capsys.readouterr().err


def test_booleans_still_set_boolean_keys(tiny_recipe):
    recipe = load_recipe(tiny_recipe(train={"fast_dropout": False}), Catalogue.discover().infos)
    assert recipe.train.fast_dropout is False


def test_a_recipe_that_is_not_utf8_is_one_message(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[model]\nname = "caf\xe9"\n'.encode("latin-1"))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text: byte 0xe9 on line 2" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("methods", "problem"),
    [
        ({"lora": {"target_modules": ["nonexistent"]}}, "methods.lora.target_modules: ['nonexistent'] names no module"),
        ({"adapters": {"reduction_factor": 1000}}, "methods.adapters.reduction_factor: 1000 leaves no bottleneck"),
    ],
    ids=["lora-targets", "adapters-width"],
)
def test_a_method_setting_that_trains_nothing_is_a_recipe_problem(tiny_recipe, capsys, methods, problem):
    assert main(["check", str(tiny_recipe(methods=methods))]) == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err
    if "lora" in methods:
        assert "query" in err and "dense" in err  # the names the model's linear layers go by


def test_a_resume_from_no_checkpoint_and_a_predict_of_nothing_are_bad_input(tiny_recipe, train_tiny, capsys):
    assert main(["run", str(tiny_recipe()), "--resume", "/no/such/checkpoint"]) == 2
    assert "is not a complete checkpoint" in capsys.readouterr().err
    run, _, _ = train_tiny(output={"overwrite": True})
    assert main(["predict", str(run.output_dir)]) == 2
    assert "give one or more TEXT arguments, --question with --context, or --file FILE" in capsys.readouterr().err


def test_a_plan_from_json_that_is_no_model_config_is_one_message(tiny_recipe, tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"learning_rate": 3e-4}))
    assert main(["plan", str(tiny_recipe()), "--model-config", str(other)]) == 2
    err = capsys.readouterr().err
    assert "--model-config:" in err and "is not a transformers model config: it has no model_type" in err
    assert "Traceback" not in err


def test_a_sweep_storage_that_is_no_journal_is_refused_and_left_as_it_was(tiny_recipe, tmp_path, capsys):
    recipe = tiny_recipe()
    before = recipe.read_bytes()
    space = tmp_path / "space.toml"
    space.write_text('metric = "accuracy"\n[params]\n"train.learning_rate" = [0.01, 0.02]\n')
    assert main(["sweep", str(recipe), "--space", str(space), "--storage", str(recipe), "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not an Optuna journal" in err and "Traceback" not in err
    assert recipe.read_bytes() == before


def test_a_finished_run_whose_summary_is_damaged_is_one_message_on_resume(train_tiny, capsys):
    run, _, _ = train_tiny()
    (run.output_dir / "summary.json").write_text('{"eval": {"accur')
    assert main(["run", str(run.output_dir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "summary.json cannot be read" in err and f"adapt eval {run.output_dir}" in err and "Traceback" not in err


def test_two_files_joined_with_cat_are_refused_at_the_repeated_header(tiny_recipe, toy, tmp_path, capsys):
    first = _tsv(tmp_path / "a.tsv", toy.rows(32, seed=1)).read_text()
    second = _tsv(tmp_path / "b.tsv", toy.rows(32, seed=3)).read_text()
    joined = tmp_path / "train.tsv"
    joined.write_text(first + second)  # `cat a.tsv b.tsv`: the second header is row 33's data
    recipe = tiny_recipe(data={"train_file": str(joined)}, train={"epochs": 1})
    assert main(["run", str(recipe)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "row 33 of the train split has the label 'label'" in err and "header line" in err
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"tokens": None, "ner_tags": ["O"]}, "task.tokens_column: row 4 of the train split has no 'tokens' (null)"),
        ({"tokens": ["EU"], "ner_tags": None}, "task.tags_column: row 4 of the train split has no 'ner_tags' (null)"),
        ({"tokens": ["EU", None], "ner_tags": ["O", "O"]}, "row 4 of the train split has a null at position 1"),
    ],
    ids=["null-tokens", "null-tags", "null-token"],
)
def test_null_tokens_or_tags_are_refused_naming_the_row(tiny_recipe, toy_ner, tmp_path, capsys, row, problem):
    assert _ner_run_with_fourth_row(tiny_recipe, toy_ner, tmp_path, lambda _: row) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert problem in err and "Traceback" not in err


@pytest.mark.parametrize("split", ["train", "eval"])
def test_a_target_that_is_not_finite_is_bad_data_naming_the_row(tiny_recipe, toy, tmp_path, capsys, split):
    def write(path, rows, bad):
        lines = [json.dumps({"sentence": t, "score": float(y)}) for t, y in rows]
        if bad:
            lines[2] = lines[2].replace(lines[2].split(": ")[-1], "Infinity}")
        path.write_text("\n".join(lines) + "\n")
        return path

    train = write(tmp_path / "train.jsonl", toy.rows(32, seed=1), split == "train")
    evaluation = write(tmp_path / "eval.jsonl", toy.rows(16, seed=2), split == "eval")
    recipe = tiny_recipe(
        data={"train_file": str(train), "eval_file": str(evaluation)},
        task={"head": "regression", "text_column": "sentence", "target_columns": ["score"]},
        train={"epochs": 1},
    )
    assert main(["run", str(recipe)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"row 3 of the {split} split has 'score' = inf, not a finite number" in err
