"""`adapt sweep` and `adapt compare` on the tiny model: trials as run directories, pruning through a plugin,
interruption and resumption from the study's storage, two workers on one study, the best recipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

PNG = b"\x89PNG\r\n\x1a\n"


def write_space(path: Path, **space) -> Path:
    space.setdefault("metric", "accuracy")
    space.setdefault(
        "params", {"train.learning_rate": {"low": 1e-3, "high": 3e-2, "log": True}, "methods.lora.r": [2, 4]}
    )
    path.write_text(tomli_w.dumps(space))
    return path


@pytest.fixture
def sweep(tiny_recipe, tmp_path, monkeypatch):
    """A Sweep of the tiny recipe (evaluating every 4 steps) over `space`, in tmp_path/sweep."""
    from adapt.commands.sweep import Sweep
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.space import load_space

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")

    def make(plugins=None, storage=None, **space) -> Sweep:
        recipe = str(tiny_recipe(train={"eval_every": 4, "epochs": 1}))
        catalogue = Catalogue.discover()
        loaded = load_space(write_space(tmp_path / "space.toml", **space), recipe, catalogue.infos, [], {})
        return Sweep(recipe, loaded, catalogue, tmp_path / "sweep", "tiny", storage=storage, plugins=plugins or {})

    return make


def test_trials_are_runs_and_the_best_recipe_reloads(sweep, tmp_path):
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe

    study = sweep(sampler="random", trials=3, pruner={"kind": "none"}).run()
    folder = tmp_path / "sweep"
    rows = json.loads((folder / "trials.json").read_text())["trials"]
    assert [r["state"] for r in rows] == ["complete"] * 3
    for row in rows:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert summary["eval"]["accuracy"] == row["value"]
        saved = (Path(row["run_dir"]) / "recipe.toml").read_text()
        assert f"r = {row['params']['methods.lora.r']}" in saved
    # the best recipe is the original one with the best trial's values, in a folder of its own
    best = load_recipe(folder / "best.toml", Catalogue.discover().infos)
    assert best.train.learning_rate == study.best_params["train.learning_rate"]
    assert best.table("lora").r == study.best_params["methods.lora.r"]
    assert best.output.dir.endswith("-best")
    assert (folder / "objective.png").read_bytes().startswith(PNG)


def test_a_pruned_trial_stops_at_its_evaluation_and_finishes_as_a_run(sweep, tmp_path):
    from optuna.trial import TrialState

    # accuracy never exceeds 1: the threshold pruner stops every trial at its first evaluation (step 4 of 12)
    study = sweep(sampler="random", trials=1, pruner={"kind": "threshold", "lower": 1.01}).run()
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [4]
    summary = json.loads((Path(trial.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["steps"] == 4 and "pruned" in summary["stopped_early"] and summary["stop_kind"] == "pruned"
    evals = [json.loads(line) for line in (Path(trial.user_attrs["run_dir"]) / "metrics.jsonl").open()]
    assert [e["step"] for e in evals if e["kind"] == "eval"] == [4]  # the final evaluation reused step 4's
    assert not (tmp_path / "sweep" / "best.toml").exists()


def test_an_early_stopped_trial_is_a_completed_trial_with_its_final_metric(sweep, tmp_path):
    from optuna.trial import TrialState

    # every trial stops early (an early-stopping plugin's decision), none is pruned: the study still has a best
    study = sweep(plugins={"stop": StopAt(5)}, sampler="random", trials=2, pruner={"kind": "none"}).run()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        summary = json.loads((Path(trial.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["steps"] == 5 and summary["stop_kind"] == "early-stopped"
        assert trial.value == summary["eval"]["accuracy"] and trial.user_attrs["stopped_early"] == "enough"
    assert (tmp_path / "sweep" / "best.toml").is_file()


def test_a_stop_of_an_unknown_kind_is_refused():
    from adapt import Run

    run = Run(recipe=None, accelerator=None, output_dir=Path("."))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind must be one of early-stopped, pruned"):
        run.request_stop("why", kind="finished")  # type: ignore[arg-type]
    run.request_stop("why")
    assert (run.stop_reason, run.stop_kind) == ("why", "early-stopped")


class StopOnce:
    """SIGINT to this process after optimizer step `step` of the first trial it sees, as Ctrl-C would."""

    def __init__(self, step: int):
        self.step, self.fired = step, False

    def adapt_on_step_end(self, run):
        if not self.fired and run.step == self.step:
            self.fired = True
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_sweep_resumes_its_trial_from_the_checkpoint(sweep, tmp_path):
    from adapt.run.interrupts import Interrupted

    stopper = StopOnce(step=8)
    with pytest.raises(Interrupted):
        sweep(plugins={"stopper": stopper}, sampler="random", trials=2, pruner={"kind": "none"}).run()
    rows = json.loads((tmp_path / "sweep" / "trials.json").read_text())["trials"]
    assert [r["state"] for r in rows] == ["interrupted"]

    study = sweep(plugins={"stopper": stopper}, sampler="random", trials=2, pruner={"kind": "none"}).run()
    rows = json.loads((tmp_path / "sweep" / "trials.json").read_text())["trials"]
    assert [r["state"] for r in rows] == ["interrupted", "complete", "complete"]
    interrupted, resumed = study.trials[:2]
    assert resumed.params == interrupted.params and resumed.user_attrs["retry_of"] == 0
    assert resumed.user_attrs["run_dir"] == interrupted.user_attrs["run_dir"]
    summary = json.loads((Path(resumed.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step-8") and summary["steps"] == 12


def test_a_killed_sweep_takes_over_its_running_trial(tiny_recipe, tmp_path, adapt_with_crash, adapt_cli):
    """SIGKILL leaves the trial 'running' in the storage; the next sweep sees nobody trains into its folder."""
    recipe = tiny_recipe(train={"eval_every": 4, "epochs": 1})
    space = write_space(tmp_path / "space.toml", sampler="random", trials=2, pruner={"kind": "none"})
    args = ["sweep", str(recipe), "--space", str(space), "--dir", str(tmp_path / "sweep")]
    killed = adapt_with_crash(*args, "--set", "plugins.crash.step=6")
    assert killed.returncode == -9, killed.stderr[-2000:]
    done = adapt_with_crash(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "sweep" / "trials.json").read_text())["trials"]
    assert [r["state"] for r in rows] == ["interrupted", "complete", "complete"]
    assert rows[1]["resumes"] == 0 and rows[1]["run_dir"] == rows[0]["run_dir"]
    summary = json.loads((Path(rows[1]["run_dir"]) / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step-4")  # the checkpoint written with the evaluation at step 4


def test_two_workers_share_one_study(tiny_recipe, tmp_path):
    """Two `adapt sweep` processes on one journal file: four trials in all, numbered once, run by both."""
    recipe = tiny_recipe(train={"epochs": 10, "eval_every": 40})
    space = write_space(tmp_path / "space.toml", sampler="random", trials=4, pruner={"kind": "none"})
    storage = tmp_path / "shared.journal"
    env = {**os.environ, "ADAPT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "adapt.commands.cli",
                "sweep",
                str(recipe),
                "--space",
                str(space),
                "--storage",
                str(storage),
                "--dir",
                str(tmp_path / f"worker-{i}"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=600) == 0, worker.stderr.read()[-3000:]
    import optuna

    study = optuna.load_study(study_name="recipe", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage))))  # fmt: skip
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert 4 <= len(complete) <= 5  # a worker finishing its trial after the fourth may add one
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert {t.user_attrs["worker"].split(":")[1] for t in complete} == {str(w.pid) for w in workers}
    assert len({t.user_attrs["run_dir"] for t in complete}) == len(complete)


def test_space_problems_are_reported_together(tiny_recipe, tmp_path):
    from adapt.errors import RecipeError
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.space import load_space

    catalogue = Catalogue.discover()
    space = write_space(
        tmp_path / "space.toml",
        metric="accuracy",
        sampler="grid",
        params={
            "train.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
            "train.learnig_rate": [1e-3],
        },
    )
    with pytest.raises(RecipeError) as caught:
        load_space(space, str(tiny_recipe()), catalogue.infos, [], {})
    assert "grid sampler needs listed values or a range with a step" in str(caught.value)

    space = write_space(
        tmp_path / "space.toml",
        params={
            "train.learnig_rate": [1e-3],
            "methods.adapters.size": [8],
            "train.batch_size": {"low": 0, "high": 4},
            "train.weight_decay": {"low": 0.1, "high": 0.01},
        },
    )
    with pytest.raises(RecipeError) as caught:
        load_space(space, str(tiny_recipe()), catalogue.infos, [], {})
    problems = caught.value.problems
    assert "4 problems in the space file" in str(caught.value), problems
    assert problems[0] == 'params."train.weight_decay": low (0.1) must be below high (0.01)'
    assert "did you mean 'learning_rate'" in problems[1]
    assert "no [methods.adapters] table" in problems[2]
    assert 'params."train.batch_size" = 0: the recipe refuses it' in problems[3]


def test_grid_space_enumerates_steps():
    from adapt.recipe.space import Range, Space

    space = Space(metric="f1", sampler="grid", params={"a": Range(low=1, high=7, step=2), "b": ["x", "y"]})
    assert space.grid() == {"a": [1, 3, 5, 7], "b": ["x", "y"]} and space.grid_size() == 8
    assert Space(metric="eval_loss", params={"a": [1]}).goal == "minimize"
    assert Range(low=0.1, high=0.3, step=0.1).grid() == [0.1, 0.2, 0.3]


def test_compare_runs_each_value_and_reuses_finished_runs(tiny_recipe, tiny_bert_dir, tmp_path, adapt_cli):
    import torch
    from transformers import BertConfig, BertModel

    other = tmp_path / "tiny-wide"
    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.hidden_size, config.intermediate_size = 48, 96
    torch.manual_seed(1)
    BertModel(config).save_pretrained(other)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert_dir / name).is_file():
            (other / name).write_bytes((tiny_bert_dir / name).read_bytes())
    recipe = tiny_recipe()
    missing = tmp_path / "no-such-model"
    values = f"model.name={tiny_bert_dir},{other},{missing}"
    args = ["compare", str(recipe), "--vary", values, "--dir", str(tmp_path / "cmp")]
    first = adapt_cli(*args, env={"COLUMNS": "300"})
    assert first.returncode == 0, first.stderr[-3000:]  # one value failing does not stop the others
    runs = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["finished", "finished", "failed"]
    assert "no-such-model" in runs[2]["error"] and "failed: " in first.stdout
    runs = runs[:2]
    assert runs[1]["trainable"] > runs[0]["trainable"]  # the wider model's LoRA and head are larger
    assert (tmp_path / "cmp" / "compare.png").read_bytes().startswith(PNG)
    assert "accuracy" in first.stdout and "tiny-wide" in first.stdout, first.stdout
    names = [Path(r["run_dir"]).name for r in runs]  # the model folder's name, not its whole path
    assert names[0].startswith("0-tiny-bert") and names[1] == "1-tiny-wide"

    again = adapt_cli(*args)
    assert again.returncode == 0 and again.stderr.count("has already finished; reusing it") == 2
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"][:2] == runs


def test_vary_values_are_typed_like_set():
    from adapt.commands.compare import parse_vary
    from adapt.errors import RecipeError

    assert parse_vary("methods.lora.r=4,8,16") == ("methods.lora.r", [4, 8, 16])
    assert parse_vary("model.name=a/b,c/d") == ("model.name", ["a/b", "c/d"])
    assert parse_vary('data.preprocess=["x.py:f", "y.py:g"]') == ("data.preprocess", ["x.py:f", "y.py:g"])
    with pytest.raises(RecipeError, match="at least two values"):
        parse_vary("train.learning_rate=1e-3")
    with pytest.raises(RecipeError, match="expected SECTION.KEY=A,B,C"):
        parse_vary("learning_rate")


class StopAt:
    def __init__(self, step: int):
        self.step = step

    def adapt_on_step_end(self, run):
        if run.step == self.step:
            run.request_stop("enough")
            run.request_stop("the first request wins")


def test_a_plugin_can_end_training_early(tiny_recipe, monkeypatch):
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe
    from adapt.run.rundir import run_status
    from adapt.train.orchestration import run_recipe

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    catalogue = Catalogue.discover(extra={"stop": StopAt(5)})
    recipe = load_recipe(tiny_recipe(), catalogue.infos)
    summary = run_recipe(recipe, catalogue)
    assert summary["steps"] == 5 and summary["stopped_early"] == "enough"
    assert summary["stop_kind"] == "early-stopped"
    assert run_status(Path(recipe.output.dir)) == "finished"  # evaluated, saved, a run like any other
    assert (Path(recipe.output.dir) / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "recipes" / "spaces").glob("*.toml")), ids=str)
def test_shipped_spaces_are_valid_for_their_recipe(path):
    """recipes/spaces/NAME.toml is the space of recipes/NAME.toml."""
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.space import load_space

    catalogue = Catalogue.discover()
    recipe = path.parents[1] / path.name
    space = load_space(path, str(recipe), catalogue.infos, ["output.overwrite=true"], {})
    assert space.trials and space.trials >= 8 and set(space.params) == {"train.learning_rate", "methods.lora.r"}


def test_a_killed_comparison_takes_its_child_run_down_with_it(tiny_recipe, tmp_path):
    """SIGKILL to `adapt compare` (nothing can be caught): the kernel sends its child run SIGTERM, which
    checkpoints and stops, so no run trains on alone; compare run again continues it."""
    import subprocess
    import sys
    import time

    recipe = tiny_recipe(train={"epochs": 200, "checkpoint_every": 20})
    folder = tmp_path / "cmp"
    env = {**os.environ, "ADAPT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    command = [sys.executable, "-m", "adapt", "compare", str(recipe), "--vary", "train.seed=1,2", "--dir", str(folder)]
    log = tmp_path / "compare.err"
    with log.open("w") as err:
        parent = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
    run_dir = folder / "0-1"
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        assert parent.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    child = json.loads((run_dir / ".adapt-run.json").read_text())["pid"]
    parent.kill()
    parent.wait()
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child run went on training after its comparison was killed")
    assert json.loads((run_dir / ".adapt-run.json").read_text())["status"] == "interrupted"


class StopAt5BySigterm:
    def adapt_on_step_end(self, run):
        if run.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_comparison_waits_for_a_run_still_training_in_its_folder(tiny_recipe, tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    from adapt.commands.compare import Comparison
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe
    from adapt.run.interrupts import Interrupted
    from adapt.run.rundir import LOCK
    from adapt.train.orchestration import run_recipe

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    recipe = str(tiny_recipe(train={"checkpoint_every": 100}))
    comparison = Comparison(recipe, "train.seed", [1, 2], Catalogue.discover(), tmp_path / "cmp")
    run_dir = tmp_path / "cmp" / "0-1"
    catalogue = Catalogue.discover(extra={"stop": StopAt5BySigterm()})  # the earlier comparison's child, stopped
    with pytest.raises(Interrupted):
        run_recipe(load_recipe(recipe, catalogue.infos, [f"output.dir={json.dumps(str(run_dir))}", "train.seed=1"]),
                   catalogue)
    hold = f"import fcntl, os, time; fd = os.open({str(run_dir / LOCK)!r}, os.O_RDWR | os.O_CREAT); "
    hold += "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(3)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"  # an earlier comparison's child, still training
    first, second = comparison.run()
    holder.wait()
    assert first["status"] == second["status"] == "finished"
    assert "a run is still training in" in capsys.readouterr().err
