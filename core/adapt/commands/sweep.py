"""`adapt sweep`: an Optuna study over recipe keys, each trial a normal run directory.

Trials report their evaluations to the study's pruner through a plugin and stop early when it says so.
The study lives in its storage (a journal file in the sweep folder unless `--storage` names another), so a
sweep that is interrupted continues where it stopped when run again (an interrupted trial resumes from its
checkpoint), and several `adapt sweep` processes, on one machine or several, work on one study.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapt import hookimpl
from adapt.errors import AdaptError, UsageError
from adapt.io import atomic_write_json, atomic_write_text
from adapt.plugin.manager import Catalogue
from adapt.recipe.loader import load_recipe, output_override, recipe_data
from adapt.recipe.space import Space
from adapt.run.context import Run
from adapt.run.interrupts import Interrupted
from adapt.run.rundir import LATEST, in_use, run_status
from adapt.types import PluginInfo

PRUNING_PLUGIN = "sweep-pruning"


class TrialFailed(Exception):
    """A trial's run failed (a plugin error, out of memory, a value the recipe refuses): recorded, not fatal."""


class SpaceMetricError(AdaptError):
    """The space file's metric is one the head never reports: every trial would fail the same way (bad input)."""

    exit_code = 2


class TrialPruning:
    """The plugin a sweep registers for each trial: every evaluation's objective metric goes to the study,
    and the run stops (finishing normally, `stopped_early` in its summary) when the pruner says so."""

    def __init__(self, trial: Any, space: Space):
        self.trial = trial
        self.space = space

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(kind="infrastructure", summary="reports a sweep trial's evaluations to its Optuna pruner")

    @hookimpl
    def adapt_on_train_start(self, run: Run) -> None:
        if run.metric_names is not None and self.space.metric not in run.metric_names:
            raise SpaceMetricError(
                f"space file: metric '{self.space.metric}' is not among the eval metrics of {run.recipe.head}: "
                f"{', '.join(run.metric_names)} (found before the first training step)"
            )

    @hookimpl
    def adapt_on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        value = metrics.get(self.space.metric)
        if value is None or run.step >= run.max_steps:  # the final evaluation is the trial's value, not a report
            return
        self.trial.report(value, step=run.step)
        if self.trial.should_prune():
            reason = f"pruned at step {run.step} ({self.space.metric} {value:.4f}, {self.space.pruner.kind})"
            run.request_stop(reason, kind="pruned")


@dataclass
class Sweep:
    recipe_path: str
    space: Space
    catalogue: Catalogue
    folder: Path
    study_name: str
    storage: str | None = None
    overrides: list[str] = field(default_factory=list)
    #: Called after each trial with the study (the CLI prints its table).
    on_trial: Callable[[Any], None] | None = None
    #: Extra plugins for every trial (tests register plain objects).
    plugins: Mapping[str, Any] = field(default_factory=dict)
    #: Trials this process has run.
    trials_run: int = 0

    def study(self) -> Any:
        """The study, created or joined; this process counts as its next worker (which seeds the sampler)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported in adapt's table
        study = optuna.create_study(
            storage=open_storage(self.storage, self.folder),
            pruner=self.space.pruner.build(),
            study_name=self.study_name,
            direction=self.space.goal,
            load_if_exists=True,
        )
        worker = study.user_attrs.get("workers", 0)
        study.set_user_attr("workers", worker + 1)
        study.sampler = self.space.sampler_for(worker)
        return study

    def target(self, requested: int | None) -> int:
        if requested is not None:
            return requested
        if self.space.trials is not None:
            return self.space.trials
        if self.space.sampler == "grid":
            return self.space.grid_size()
        raise AdaptError("how many trials? give --trials N, or trials = N in the space file")

    def run(self, trials: int | None = None) -> Any:
        """Run trials until the study holds `trials` finished ones (complete, pruned or failed; not counting
        interrupted ones, which are run again), then write the results. Returns the study."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.target(trials)
        with self._locked():  # one worker at a time takes a number and looks for trials to take over
            study = self.study()
            _take_over_stopped_trials(study)
        try:
            if counted(study) < target or _waiting(study):
                study.optimize(
                    self._objective, catch=(TrialFailed,), callbacks=[self._after_trial(target)], gc_after_trial=True
                )
        finally:  # an interrupted trial is recorded too
            self.write_results(study)
        return study

    def _after_trial(self, target: int) -> Callable[[Any, Any], None]:
        def callback(study: Any, trial: Any) -> None:
            self.trials_run += 1
            self.write_results(study)
            if self.on_trial is not None:
                self.on_trial(study)
            if counted(study) >= target and not _waiting(study):
                study.stop()

        return callback

    def _objective(self, trial: Any) -> float:
        from adapt.train.orchestration import run_recipe

        values = self.space.suggest(trial)
        resumes = trial.user_attrs.get("resumes")
        run_dir = Path(resumes) if resumes else self.folder / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        for name, plugin in {**self.plugins, PRUNING_PLUGIN: TrialPruning(trial, self.space)}.items():
            self.catalogue.add(name, plugin)
        catalogue = self.catalogue
        try:
            recipe = load_recipe(
                self.recipe_path,
                catalogue.infos,
                [*self.overrides, output_override(run_dir)],
                broken=catalogue.broken,
                values=values,
            )
            summary = run_recipe(recipe, catalogue, resume=LATEST if resumes else None)
        except Interrupted:
            trial.set_user_attr("interrupted", True)
            raise
        except SpaceMetricError:
            raise  # the study's own mistake, not this trial's: stop it here
        except AdaptError as exc:
            trial.set_user_attr("error", str(exc)[:1000])
            raise TrialFailed(str(exc)) from exc
        metrics = summary.get("eval", {})
        for key in ("steps", "train_seconds"):
            trial.set_user_attr(key, summary.get(key))
        trial.set_user_attr("eval", metrics)
        if self.space.metric not in metrics:
            raise AdaptError(
                f"space file: metric '{self.space.metric}' is not among the eval metrics of "
                f"{summary.get('head', 'this head')}: {', '.join(metrics) or 'none'}"
            )
        if summary.get("stopped_early"):
            trial.set_user_attr("stopped_early", summary["stopped_early"])
            # a run stopped early by a plugin (early stopping) is a result; only the pruner's give a trial up
            if summary.get("stop_kind", "pruned") == "pruned":  # summaries before stop kinds: the pruner's
                import optuna

                raise optuna.TrialPruned(summary["stopped_early"])
        return metrics[self.space.metric]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.folder / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def write_results(self, study: Any) -> None:
        """trials.json, best.toml (the recipe with the best trial's values) and objective.png in the folder."""
        from adapt.commands.charts import objective_chart

        rows = trial_rows(study)
        atomic_write_json(self.folder / "trials.json", {"study": self.study_name, "trials": rows})
        objective_chart(rows, self.space.metric, self.space.goal, self.folder / "objective.png")
        best = best_trial(study)
        if best is None:
            return
        import tomli_w

        raw = recipe_data(self.recipe_path, self.overrides, best.params, [])
        raw.setdefault("output", {})["dir"] = f"{raw.get('output', {}).get('dir', 'runs/run')}-best"
        header = (
            f"# The best trial of study '{self.study_name}' ({self.space.metric} {best.value:.4f}, trial "
            f"{best.number}: {best.user_attrs.get('run_dir')}).\n# adapt run {self.folder / 'best.toml'}\n\n"
        )
        atomic_write_text(self.folder / "best.toml", header + tomli_w.dumps(raw))


def _check_journal(path: Path, given: bool) -> None:
    """A journal file that exists must be one: its lines are Optuna's JSON log records. Anything else (a recipe
    given as --storage by mistake) is refused before Optuna opens, and so before it could append to it."""
    import json

    try:
        with path.open("rb") as handle:
            first = handle.readline()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"--storage: cannot read '{path}' ({exc.strerror or exc})") from None
    if not first:
        return  # an empty file: a journal not yet written
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        key = "--storage" if given else "the sweep folder"
        raise UsageError(
            f"{key}: '{path}' is not an Optuna journal (its first line is no journal record); give a journal file, "
            "a new file name, or a database URL such as sqlite:///study.db"
        )


def open_storage(storage: str | None, folder: Path) -> Any:
    """A URL (sqlite:///..., postgresql://..., mysql://...) as Optuna reads it; anything else is a journal
    file (several processes on one machine, or on a shared file system); None: `folder/study.journal`."""
    import optuna

    if storage is not None and "://" in storage:
        return storage
    path = Path(storage) if storage is not None else folder / "study.journal"
    _check_journal(path, given=storage is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


def _take_over_stopped_trials(study: Any) -> None:
    """Queue again every trial that stopped without finishing: interrupted (its run has a checkpoint), or still
    marked running although nobody trains into its folder (its process was killed). The new trial resumes the
    old one's run directory with the same parameters."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    taken = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        run_dir = trial.user_attrs.get("run_dir")
        if trial.number in taken or run_dir is None:
            continue
        if trial.state == TrialState.RUNNING:
            if not Path(run_dir).is_dir() or in_use(Path(run_dir)) or run_status(Path(run_dir)) == "finished":
                continue  # still running somewhere (or not yet started there)
            try:
                study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue  # another worker got there first
        elif not trial.user_attrs.get("interrupted"):
            continue
        study.enqueue_trial(trial.params, user_attrs={"resumes": run_dir, "retry_of": trial.number})


def counted(study: Any) -> int:
    """Finished trials toward the target: complete, pruned, or failed other than by an interruption."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=done) if not t.user_attrs.get("interrupted"))


def _waiting(study: Any) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def best_trial(study: Any) -> Any:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = "interrupted" if t.user_attrs.get("interrupted") else t.state.name.lower()
        value = t.value if t.value is not None else (t.intermediate_values.get(t.last_step) if t.last_step else None)
        rows.append(
            {
                "number": t.number,
                "state": state,
                "value": value,
                "params": t.params,
                "run_dir": t.user_attrs.get("run_dir"),
                "steps": t.user_attrs.get("steps"),
                "train_seconds": t.user_attrs.get("train_seconds"),
                "note": t.user_attrs.get("stopped_early") or t.user_attrs.get("error") or "",
                "resumes": t.user_attrs.get("retry_of"),
            }
        )
    return rows
