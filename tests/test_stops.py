"""When a run stops: SIGTERM/SIGINT, a loss that is not finite, failed writes, and the run directory (never
mixed with another run, never destroyed before the new run has succeeded, never used by two runs at once)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from adapt.commands.cli import main
from adapt.plugin.manager import Catalogue
from adapt.recipe.loader import load_recipe
from adapt.train.nonfinite import NonFiniteLoss
from adapt.train.orchestration import run_recipe


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")


def marker(run_dir: Path) -> dict:
    return json.loads((run_dir / ".adapt-run.json").read_text())


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# --- signals ----------------------------------------------------------------------------------------------


def test_sigterm_finishes_the_step_checkpoints_and_resumes_exactly(tiny_recipe, tmp_path, adapt_with_crash):
    recipe = str(tiny_recipe(train={"checkpoint_every": 100}))  # only the interrupt writes a checkpoint mid-epoch
    stopped = adapt_with_crash(
        "run", recipe, "--set", "plugins.crash.step=5", "--set", 'plugins.crash.signal="SIGTERM"'
    )
    run_dir = tmp_path / "run"
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "stopped by SIGTERM after optimizer step 5" in stopped.stderr
    assert f"resume with `adapt run {run_dir} --resume`" in stopped.stderr
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-5"]
    assert marker(run_dir)["status"] == "interrupted" and marker(run_dir)["signal"] == "SIGTERM"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4  # logged every 2 steps, the file closed cleanly
    # the run directory alone is enough to continue, and the result is the uninterrupted run's
    resumed = adapt_with_crash("run", str(run_dir), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert main(["run", recipe, "--set", f"output.dir={json.dumps(str(tmp_path / 'reference'))}"]) == 0
    resumed, reference = summary_of(run_dir), summary_of(tmp_path / "reference")
    assert resumed["eval"] == reference["eval"] and resumed["resumed_from"].endswith("step-5")
    adapter = "adapter/adapter_model.safetensors"
    assert (run_dir / adapter).read_bytes() == (tmp_path / "reference" / adapter).read_bytes()


def test_a_second_sigint_stops_at_once_and_the_folder_says_how_to_go_on(
    tiny_recipe, tmp_path, adapt_with_crash, capsys
):
    recipe = str(tiny_recipe(train={"checkpoint_every": 4}))
    args = (
        "--set",
        "plugins.crash.step=6",
        "--set",
        'plugins.crash.signal="SIGINT"',
        "--set",
        "plugins.crash.twice=true",
    )
    stopped = adapt_with_crash("run", recipe, *args)
    run_dir = tmp_path / "run"
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "stopped by SIGINT" in stopped.stderr
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-4"]  # no checkpoint for step 6
    # a plain rerun is refused with both ways forward; eval refuses a model that was never saved
    assert main(["run", recipe]) == 2
    err = capsys.readouterr().err
    assert "holds an unfinished run (interrupted by SIGINT" in err and "newest checkpoint: step-4" in err
    assert f"adapt run {run_dir} --resume" in err and "--set output.overwrite=true" in err
    assert main(["eval", str(run_dir)]) == 1
    assert "did not finish (interrupted by SIGINT" in capsys.readouterr().err


def test_signal_outside_the_loop_stops_at_once():
    import os
    import signal

    from adapt.run.interrupts import Interrupted, StopSignals

    with StopSignals(announce=False) as stop, pytest.raises(Interrupted) as info:
        os.kill(os.getpid(), signal.SIGTERM)  # not in the training loop: no step to finish
    assert info.value.exit_code == 143
    assert stop.requested == signal.SIGTERM  # kept too: should something swallow the exception, `check` stops
    with pytest.raises(Interrupted):
        stop.check()
    with StopSignals(announce=False) as stop:
        stop.graceful = True
        os.kill(os.getpid(), signal.SIGINT)  # in the loop: noted, acted on after the step
        assert stop.requested == signal.SIGINT
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)


# --- the non-finite loss guard -----------------------------------------------------------------------------


class Spike:
    """A loss term that is NaN on chosen micro-batches."""

    def __init__(self, at: set[int]):
        self.at, self.calls = at, 0

    def adapt_loss_terms(self, outputs):
        self.calls += 1
        bad = self.calls in self.at
        return {"spike": outputs.logits.sum() * (float("nan") if bad else 0.0)}


def run_with(tiny_recipe, plugin, overrides=(), **changes):
    catalogue = Catalogue.discover(extra={"spike": plugin})
    return run_recipe(load_recipe(tiny_recipe(**changes), catalogue.infos, overrides), catalogue)


def test_a_nonfinite_loss_stops_the_run_naming_step_term_and_last_good_checkpoint(tiny_recipe, tmp_path):
    with pytest.raises(NonFiniteLoss) as info:
        run_with(tiny_recipe, Spike({7}), train={"checkpoint_every": 2})
    message = str(info.value)
    assert "not finite at optimizer step 7 (terms: 'spike')" in message
    assert f"last good checkpoint is {tmp_path / 'run' / 'checkpoints' / 'step-6'}" in message
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "adapter").exists()
    assert marker(tmp_path / "run")["status"] == "failed"


def test_a_learning_rate_of_1e6_no_longer_saves_a_nan_model(tiny_recipe, tmp_path, capsys):
    assert main(["run", str(tiny_recipe(train={"learning_rate": 1e6}))]) == 1
    assert "train.nonfinite: the loss was not finite at optimizer step" in capsys.readouterr().err
    assert not (tmp_path / "run" / "adapter").exists()


def test_skip_drops_the_update_and_counts_it(tiny_recipe, tmp_path):
    summary = run_with(tiny_recipe, Spike({3, 10}), ["train.nonfinite=skip"])
    assert summary["nonfinite_skipped_steps"] == 2 and summary["steps"] == 24
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in adapter.values())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in records if r["kind"] == "train")  # skipped losses are not logged


def test_skip_gives_up_after_too_many_in_a_row(tiny_recipe):
    with pytest.raises(NonFiniteLoss, match="not finite in 3 optimizer steps in a row"):
        run_with(tiny_recipe, Spike(set(range(5, 40))), ["train.nonfinite=skip", "train.max_nonfinite_skips=2"])


# --- resuming: what may change ----------------------------------------------------------------------------


def interrupted_run(tiny_recipe, tmp_path, **changes) -> str:
    """A run stopped by SIGTERM (in this process) after step 6, with a checkpoint there."""
    import os
    import signal

    class Stop:
        def adapt_on_step_end(self, run):
            if run.step == 6:
                os.kill(os.getpid(), signal.SIGTERM)

    recipe = str(tiny_recipe(train={"checkpoint_every": 100}, **changes))
    catalogue = Catalogue.discover(extra={"stop": Stop()})
    from adapt.run.interrupts import Interrupted

    with pytest.raises(Interrupted):
        run_recipe(load_recipe(recipe, catalogue.infos), catalogue)
    assert (tmp_path / "run" / "checkpoints" / "step-6" / "checkpoint.json").is_file()
    return recipe


def test_resume_refuses_changes_to_the_trajectory_and_allows_the_rest(tiny_recipe, tmp_path, capsys):
    recipe = interrupted_run(tiny_recipe, tmp_path)
    changed = ["--set", "train.learning_rate=0.02", "--set", "methods.lora.r=8"]
    assert main(["run", recipe, "--resume", *changed]) == 2
    err = capsys.readouterr().err
    assert (
        "train.learning_rate: 0.01 in the checkpoint, 0.02 now" in err
        and "methods.lora.r: 4 in the checkpoint, 8 now" in err
    )
    harmless = ["--set", "train.eval_every=3", "--set", "train.log_every=5", "--set", "plugins.disable=['progress']"]
    assert main(["run", recipe, "--resume", *harmless]) == 0
    resumed = summary_of(tmp_path / "run")
    assert resumed["resumed_from"].endswith("step-6")
    # evaluating more often changed nothing that trained: the uninterrupted run gives the same model
    assert main(["run", recipe, "--set", f"output.dir={json.dumps(str(tmp_path / 'reference'))}"]) == 0
    assert resumed["eval"] == summary_of(tmp_path / "reference")["eval"]
    adapter = "adapter/adapter_model.safetensors"
    assert (tmp_path / "run" / adapter).read_bytes() == (tmp_path / "reference" / adapter).read_bytes()
    # finished now: resuming again says so and changes nothing
    assert main(["run", recipe, "--resume"]) == 0
    assert "has already finished; nothing to resume" in capsys.readouterr().err


def test_resume_from_an_explicit_checkpoint_and_from_nothing(tiny_recipe, tmp_path, capsys):
    recipe = interrupted_run(tiny_recipe, tmp_path)
    assert main(["run", recipe, "--resume", str(tmp_path / "nowhere")]) == 2
    assert "is not a complete checkpoint" in capsys.readouterr().err
    checkpoint = tmp_path / "run" / "checkpoints" / "step-6"
    assert main(["run", recipe, "--resume", str(checkpoint)]) == 0
    # --resume with nothing to resume starts a new run (as a requeued job expects)
    fresh = str(tiny_recipe("fresh.toml", output={"dir": str(tmp_path / "fresh")}))
    assert main(["run", fresh, "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err and summary_of(tmp_path / "fresh")["steps"] == 24


# --- the run directory ------------------------------------------------------------------------------------


def test_overwrite_moves_the_old_run_aside_until_the_new_one_finishes(tiny_recipe, tmp_path, adapt_with_crash, capsys):
    recipe = str(tiny_recipe())
    assert main(["run", recipe]) == 0
    old_summary = summary_of(tmp_path / "run")
    killed = adapt_with_crash("run", recipe, "--set", "output.overwrite=true", "--set", "plugins.crash.step=3")
    assert killed.returncode == -9
    run_dir = tmp_path / "run"
    assert not (run_dir / "adapter").exists() and not (run_dir / "summary.json").exists()  # nothing of the old run
    assert main(["eval", str(run_dir)]) == 1  # not the old model's numbers
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".run.replaced-")]
    assert len(aside) == 1 and summary_of(aside[0]) == old_summary  # the old run is intact
    assert main(["run", recipe, "--set", "output.overwrite=true"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.replaced-")]  # gone once it finished
    assert marker(run_dir)["status"] == "finished"
    capsys.readouterr()


def test_a_folder_that_is_not_a_run_is_never_replaced(tiny_recipe, tmp_path, monkeypatch, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    assert main(["run", str(tiny_recipe(output={"dir": str(notes), "overwrite": True}))]) == 2
    assert "holds files that adapt did not write (thesis.tex)" in capsys.readouterr().err
    assert (notes / "thesis.tex").read_text() == "years of work" and sorted(p.name for p in notes.iterdir()) == [
        "thesis.tex"
    ]
    # "." holding a run cannot be moved aside: refused, not replaced
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(tiny_recipe(output={"dir": "."}))]) == 2
    capsys.readouterr()
    (tmp_path / "recipe.toml").write_text("")  # make "." look like a run
    assert main(["run", str(tiny_recipe("r.toml", output={"dir": ".", "overwrite": True}))]) == 2
    assert "is (or contains) the working directory" in capsys.readouterr().err


def test_a_folder_in_use_is_refused_naming_the_other_run(tiny_recipe, tmp_path, capsys):
    from adapt.run.rundir import _lock

    recipe = str(tiny_recipe())
    assert main(["run", recipe]) == 0
    held = _lock(tmp_path / "run")  # as a second `adapt run` training into it would hold it
    try:
        assert main(["run", recipe, "--set", "output.overwrite=true"]) == 2
        err = capsys.readouterr().err
        assert "is in use by another adapt run (pid" in err and "adapt" in err
    finally:
        held.release()
    assert main(["run", recipe, "--set", "output.overwrite=true"]) == 0


def test_a_failed_summary_write_keeps_the_trained_run(tiny_recipe, tmp_path, monkeypatch, capsys):
    import adapt.train.orchestration

    real = adapt.train.orchestration.atomic_write_json

    def full_disk(path, data):
        if Path(path).name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(adapt.train.orchestration, "atomic_write_json", full_disk)
    recipe = str(tiny_recipe())
    assert main(["run", recipe]) == 1
    err = capsys.readouterr().err
    assert "training finished and its artifacts are saved" in err and "summary.json could not be written" in err
    run_dir = tmp_path / "run"
    assert marker(run_dir)["status"] == "trained" and (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert main(["eval", str(run_dir), "--json"]) == 0  # the trained model is not disowned
    metrics = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(adapt.train.orchestration, "atomic_write_json", real)
    assert main(["run", str(run_dir), "--resume"]) == 0  # writes the summary from the final checkpoint
    assert summary_of(run_dir)["eval"] == metrics


def test_a_failed_checkpoint_write_leaves_the_previous_one_valid(tiny_recipe, tmp_path, monkeypatch, capsys):
    from adapt.run.checkpoint import Checkpointer

    real, calls = Checkpointer._write_own, []

    def fail_second(self, tmp, state, plugin_states):
        calls.append(tmp)
        if len(calls) == 2:
            (tmp / "trainer_state.pt").write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "trainer_state.pt"))
        return real(self, tmp, state, plugin_states)

    monkeypatch.setattr(Checkpointer, "_write_own", fail_second)
    assert main(["run", str(tiny_recipe(train={"checkpoint_every": 3}))]) == 1
    err = capsys.readouterr().err
    checkpoints = tmp_path / "run" / "checkpoints"
    assert "writing checkpoint" in err and f"the previous checkpoint {checkpoints / 'step-3'} is intact" in err
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-3"]  # no half-written step-6
    monkeypatch.setattr(Checkpointer, "_write_own", real)
    assert main(["run", str(tmp_path / "run"), "--resume"]) == 0


class _InitialLora:
    def __init__(self):
        self.weights = {}

    def adapt_on_train_start(self, run):
        self.weights = {n: p.detach().clone() for n, p in run.unwrapped_model.named_parameters() if "lora_A" in n}


@pytest.mark.parametrize("plan", ["off", "failing after drawing random numbers"])
def test_the_memory_plan_leaves_every_random_stream_as_it_found_it(tiny_recipe, run_recipe, monkeypatch, plan):
    import torch

    import adapt.plan.planner

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    planned = _InitialLora()
    run_recipe(tiny_recipe(), plugins={"initial": planned})
    real = adapt.plan.planner.make_plan

    def other(*args, **kwargs):
        if plan != "off":
            torch.rand(1000)  # as PEFT's initialisation of the plan's model does
        raise RuntimeError("no plan today")

    monkeypatch.setattr(adapt.plan.planner, "make_plan", other)
    unplanned = _InitialLora()
    run_recipe(tiny_recipe(output={"overwrite": True}), plugins={"initial": unplanned})
    assert planned.weights and planned.weights.keys() == unplanned.weights.keys()
    assert all(torch.equal(planned.weights[n], unplanned.weights[n]) for n in planned.weights)
    assert adapt.plan.planner.make_plan is not real


def test_the_logged_learning_rate_is_the_one_the_step_used(train_tiny):
    run, _, _ = train_tiny(train={"log_every": 1, "warmup_ratio": 0.0, "learning_rate": 0.01})
    logs = [json.loads(line) for line in (run.output_dir / "metrics.jsonl").read_text().splitlines()]
    first, second = [r for r in logs if r["kind"] == "train"][:2]
    assert first["step"] == 1 and first["lr"] == 0.01  # linear decay from 0.01: step 1 trains at the full rate
    assert second["lr"] < 0.01


class _Payload:
    """Runs a command when unpickled, as a poisoned checkpoint file would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _truncate(name, size=10):
    def damage(checkpoint):
        path = checkpoint / name
        path.write_bytes(path.read_bytes()[:size])

    return damage


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (_truncate("random_states_0.pkl"), "random_states_0.pkl has 10 bytes of the"),
        (_truncate("model.safetensors", 100), "model.safetensors has 100 bytes of the"),
        (lambda c: (c / "optimizer.bin").unlink(), "optimizer.bin is missing"),
        (None, "trainer_state.pt has"),
    ],
    ids=["rng-truncated", "weights-truncated", "optimizer-deleted", "pickle-payload"],
)
def test_a_damaged_checkpoint_is_refused_by_name_never_resumed_inexactly(tiny_recipe, tmp_path, capsys, damage, named):
    import pickle

    recipe = interrupted_run(tiny_recipe, tmp_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-6"
    ran = tmp_path / "payload-ran"
    if damage is None:
        (checkpoint / "trainer_state.pt").write_bytes(pickle.dumps(_Payload(ran)))
    else:
        damage(checkpoint)
    assert main(["run", recipe, "--resume"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"checkpoint {checkpoint} is damaged" in err and named in err and "Traceback" not in err
    assert "start again with --set output.overwrite=true" in err
    assert not ran.exists()


def test_resuming_on_changed_training_data_is_refused(tiny_recipe, toy_data, tmp_path, capsys):
    train = tmp_path / "train.tsv"
    train.write_text(toy_data["train"].read_text())
    recipe = interrupted_run(tiny_recipe, tmp_path, data={"train_file": str(train)})
    header, *rows = train.read_text().splitlines()
    flipped = [f"{r.rsplit(chr(9), 1)[0]}\t{1 - int(r.rsplit(chr(9), 1)[1])}" for r in rows[:5]] + rows[5:]
    train.write_text("\n".join([header, *flipped]) + "\n")
    assert main(["run", recipe, "--resume"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the training data is not what" in err and "a data file changed since" in err
    train.write_text("\n".join([header, *rows]) + "\n")  # the same rows again (a new file date): resumes
    assert main(["run", recipe, "--resume"]) == 0


def test_a_checkpoint_write_that_torch_reports_as_a_runtime_error_is_one_message(
    tiny_recipe, tmp_path, monkeypatch, capsys
):
    from adapt.run import checkpoint

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\nfile write failed")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    assert main(["run", str(tiny_recipe(train={"checkpoint_every": 3}))]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "writing checkpoint" in err and "file write failed" in err and "Traceback" not in err
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))  # nothing half-written stays


def test_a_signal_during_the_final_evaluation_stops_the_run_which_resumes_to_the_same_result(tiny_recipe, tmp_path):
    import os
    import signal

    from adapt.run.interrupts import Interrupted

    class StopInFinalEvaluation:
        def adapt_on_evaluate(self, run, metrics):
            if run.step == run.max_steps:
                os.kill(os.getpid(), signal.SIGTERM)

    recipe = str(tiny_recipe())
    catalogue = Catalogue.discover(extra={"stop": StopInFinalEvaluation()})
    with pytest.raises(Interrupted) as stopped:
        run_recipe(load_recipe(recipe, catalogue.infos), catalogue)
    run_dir = tmp_path / "run"
    assert stopped.value.exit_code == 143
    assert "stopped by SIGTERM after training's last step (24), before its evaluation and artifacts" in str(
        stopped.value.message
    )
    assert marker(run_dir)["status"] == "interrupted" and not (run_dir / "summary.json").exists()
    assert main(["run", recipe, "--resume"]) == 0
    assert main(["run", recipe, "--set", f"output.dir={json.dumps(str(tmp_path / 'reference'))}"]) == 0
    assert summary_of(run_dir)["eval"] == summary_of(tmp_path / "reference")["eval"]
    adapter = "adapter/adapter_model.safetensors"
    assert (run_dir / adapter).read_bytes() == (tmp_path / "reference" / adapter).read_bytes()


def test_a_signal_whose_exception_a_library_swallows_during_start_up_still_stops_the_run(tiny_recipe, tmp_path, capsys):
    import os
    import signal
    import time

    from adapt.run.interrupts import Interrupted

    class SwallowingLibrary:
        def adapt_configure(self, recipe):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
            except KeyboardInterrupt:  # as a broad `except` in a library would (datasets, fingerprinting a map)
                pass

    recipe = str(tiny_recipe())
    catalogue = Catalogue.discover(extra={"swallow": SwallowingLibrary()})
    with pytest.raises(Interrupted) as stopped:
        run_recipe(load_recipe(recipe, catalogue.infos), catalogue)
    assert stopped.value.exit_code == 130 and not (tmp_path / "run" / "summary.json").exists()
    # stopped before its recipe.toml was written: the advice names the recipe file, and following it works
    assert main(["run", recipe]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"continue it with `adapt run {recipe} --resume`" in err
    assert main(["run", recipe, "--resume"]) == 0


_STUCK_THREAD = """
import os, signal, sys, threading, time
from adapt.plugin import manager

discover = manager.Catalogue.discover.__func__


class Stuck:
    def adapt_configure(self, recipe):
        threading.Thread(target=time.sleep, args=(3600,)).start()  # a library's worker thread that never ends
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


manager.Catalogue.discover = classmethod(lambda cls, extra=None: discover(cls, {**(extra or {}), "stuck": Stuck()}))
from adapt.commands.cli import entry

entry(["run", sys.argv[1]])
"""


def test_a_run_stopped_during_start_up_exits_even_with_a_thread_left_behind(tiny_recipe):
    import os
    import subprocess
    import sys

    env = {**os.environ, "ADAPT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _STUCK_THREAD, str(tiny_recipe())], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 130, done.stderr[-2000:]
    assert "stopped by SIGINT" in done.stderr
