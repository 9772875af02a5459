"""What `adapt run` does around the loop, in order: claim the output folder, build the run, plan its memory,
check the disk, choose the batch, load the model, train (adapt.train.loop), then write the summary.

A run claims its output folder first (a lock; an earlier run moved aside, never mixed) and resumes from a
checkpoint exactly: same batches, same random numbers, same weights bit for bit as the run that was not interrupted.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapt.errors import AdaptError
from adapt.io import atomic_write_json, atomic_write_text
from adapt.model.build import build_model, encode, start_run
from adapt.plugin.manager import Catalogue
from adapt.recipe.loader import Recipe
from adapt.run.context import Run
from adapt.run.interrupts import Interrupted, StopSignals
from adapt.run.report import MemoryProbe, run_summary, show_notes
from adapt.run.rundir import Claim, RunDirectory, RunDirectoryError, claim_output
from adapt.speed.seam import SpeedUps
from adapt.train.autobatch import largest_that_runs, start_size, with_batch
from adapt.train.loop import TrainingLoop
from adapt.train.resume_policy import check_resumable


def run_recipe(
    recipe: Recipe, catalogue: Catalogue, resume: str | None = None, ignore_plan: bool = False
) -> dict[str, Any]:
    """Everything `adapt run` does: claim the output folder, build, train (or resume: `resume` is
    "latest" or a checkpoint path), evaluate, save; returns the summary (an earlier one when the run in
    the folder had already finished). On CUDA a run whose memory plan does not fit the device stops before
    loading weights, unless `ignore_plan`."""
    with StopSignals() as stop:
        claim = _claim(recipe, resume)
        if claim.finished:
            return _finished_summary(Path(recipe.output.dir))
        directory = claim.directory
        try:
            if claim.checkpoint is not None:
                recipe = check_resumable(recipe, claim.checkpoint, catalogue)
            summary = _train(recipe, catalogue, claim, stop, ignore_plan)
        except SummaryNotWritten:
            raise  # the marker already says "trained": the model is usable
        except Interrupted as exc:
            if directory is not None:
                directory.mark("interrupted", signal=signal.Signals(exc.signum).name, step=_step_of(exc))
            raise
        except BaseException as exc:
            if directory is not None and not isinstance(exc, RunDirectoryError):
                directory.mark("failed", error=str(exc)[:500], step=_step_of(exc))
            raise
        finally:
            if directory is not None:
                directory.release()
    return summary


def _finished_summary(folder: Path) -> dict[str, Any]:
    """The summary of a run that had already finished ({} where it wrote none); a damaged one is one message."""
    summary_file = folder / "summary.json"
    if not summary_file.is_file():
        return {}
    try:
        return json.loads(summary_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirectoryError(
            f"the run in '{folder}' has finished, but its summary.json cannot be read ({exc}); its model is saved: "
            f"`adapt eval {folder}` recomputes the metrics"
        ) from None


def _step_of(exc: BaseException) -> int | None:
    return getattr(exc, "step", None)


def _claim(recipe: Recipe, resume: str | None) -> Claim:
    """The main process claims the folder; the others learn its decision (or its error)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # As the Accelerator will (AcceleratorState honours ACCELERATE_USE_CPU; PartialState alone does not).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))

    def decide() -> Claim:
        return claim_output(
            recipe.output.dir, overwrite=recipe.output.overwrite, resume=resume, recipe_source=recipe.source
        )

    if state.num_processes == 1:
        claim = decide()
    else:
        from accelerate.utils import broadcast_object_list

        shared: list[Any] = [None]
        claim = None
        if state.is_main_process:
            try:
                claim = decide()
                shared = [(claim.checkpoint, claim.finished, None, 0)]
            except AdaptError as exc:
                shared = [(None, False, str(exc), exc.exit_code)]
        broadcast_object_list(shared)
        checkpoint, finished, error, code = shared[0]
        if error is not None:
            raised = RunDirectoryError(error)
            raised.exit_code = code
            raise raised
        if claim is None:
            claim = Claim(checkpoint=checkpoint, finished=finished)
    show_notes(claim.notes)
    return claim


def _train(
    recipe: Recipe, catalogue: Catalogue, claim: Claim, stop: StopSignals, ignore_plan: bool = False
) -> dict[str, Any]:
    import tomli_w

    run, hooks = start_run(recipe, catalogue)
    stop.check()  # after each stage of start-up: a signal whose exception a library swallowed still stops the run
    speed = SpeedUps(run)
    speed.before_loading()
    encode(run, hooks)
    stop.check()
    plan = plan_before_loading(run, catalogue, ignore_plan)
    stop.check()
    check_free_space(run, plan)
    auto_batch = recipe.train.batch_size == "auto"
    if auto_batch and run.accelerator.device.type != "cuda":
        choose_batch(run, start_size(plan, recipe), "the memory plan")
    probe = MemoryProbe()  # the baseline: data loaded and encoded, model not yet
    param_counts = build_model(run, hooks)
    stop.check()
    if auto_batch and run.accelerator.device.type == "cuda":
        choose_batch(run, largest_that_runs(run, hooks, start_size(plan, recipe)), "a trial step")
    if plan is not None and plan.batch_size != run.recipe.train.batch_size:
        plan = plan.at_batch(run.recipe.train.batch_size)
    recipe = run.recipe
    if run.is_main_process:
        atomic_write_text(run.output_dir / "recipe.toml", tomli_w.dumps(recipe.to_dict()))
    loop = TrainingLoop(run, hooks, stop, plan, speed)
    loop.train(claim.checkpoint)  # calls adapt_on_train_error itself when training, evaluating or saving fails
    try:
        summary = run_summary(run, loop.stats(), param_counts, hooks.summary(run=run), probe)
        if plan is not None:
            summary["memory"]["planned_peak_bytes"] = plan.planned_peak_bytes
        summary["plugins"] = catalogue.provenance(recipe)
        if run.is_main_process:
            _write_summary(run, claim.directory, summary)
            loop.checkpointer.remove_all()
    except BaseException as error:
        hooks.on_train_error(run=run, error=error)
        raise
    hooks.on_train_end(run=run, summary=summary)
    return summary


def check_free_space(run: Run, plan) -> None:
    """Before any weight loads: the output folder's file system must hold the checkpoints (keep_checkpoints,
    plus the one written before the oldest goes) and the artifacts, as the memory plan sizes them."""
    if plan is None or not run.is_main_process:
        return
    cfg = run.recipe.train
    checkpoint = plan.gradients + plan.optimizer_state  # the trained weights (as many bytes as their gradients)
    need = (cfg.keep_checkpoints + 1 if cfg.keep_checkpoints else 0) * checkpoint + plan.gradients + 16 * 2**20
    folder = run.output_dir.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < need:
        raise RunDirectoryError(
            f"output.dir: {free / 2**20:,.0f} MiB free on the file system holding '{run.output_dir}', but this run "
            f"writes about {need / 2**20:,.0f} MiB ({cfg.keep_checkpoints} checkpoints of ~{checkpoint / 2**20:,.0f} "
            "MiB, one more while the next is written, and the artifacts); free some space, lower "
            "train.keep_checkpoints, or choose another output.dir"
        )


def choose_batch(run: Run, batch: int, how: str) -> None:
    """Resolve `batch_size = "auto"`: the run's recipe (saved with the run) gets the micro-batch and the
    accumulation that keeps its effective batch."""
    run.recipe = with_batch(run.recipe, batch)
    cfg = run.recipe.train
    run.accelerator.gradient_accumulation_steps = cfg.grad_accum_steps
    if run.is_main_process:
        per_step = f" x {cfg.grad_accum_steps} accumulated" if cfg.grad_accum_steps > 1 else ""
        show_notes([f"train.batch_size auto: {cfg.batch_size}{per_step} (from {how})"])


@contextlib.contextmanager
def random_streams_kept() -> Iterator[None]:
    """Every random stream a run draws from (Python's, numpy's, torch's CPU and CUDA generators) as it was on entry,
    whatever happens inside: a run's initial weights then depend on its seed alone."""
    import random

    import numpy as np
    import torch

    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def plan_before_loading(run: Run, catalogue: Catalogue, ignore_plan: bool):
    """The memory plan's one line, printed before the weights load; on CUDA a plan over the device's memory
    stops the run here (unless `ignore_plan`). An estimate that cannot be made never stops a run."""
    from adapt.plan.device import parse_device
    from adapt.plan.planner import make_plan

    try:
        with random_streams_kept():  # the plan's meta model draws initial values (LoRA's); the run must not see it
            plan = make_plan(run.recipe, catalogue, parse_device(run.accelerator.device.type), of_run=run)
    except Exception as exc:  # noqa: BLE001 - the run itself may still work
        if run.is_main_process:
            show_notes([f"no memory plan ({type(exc).__name__}: {str(exc)[:200]})"])
        return None
    if run.is_main_process:
        show_notes([plan.one_line()])
    auto_batch = run.recipe.train.batch_size == "auto"  # the batch is chosen to fit
    if plan.fits is False and plan.device_kind == "cuda" and not ignore_plan and not auto_batch:
        advice = "; ".join(plan.advice())
        raise AdaptError(
            f"memory plan: this run needs about {plan.needed / 2**30:.1f} GiB, more than the "
            f"{plan.capacity / 2**30:.1f} GiB of {plan.device}. To fit: {advice}. (`adapt plan` shows the "
            "details; `adapt run --ignore-plan` runs anyway.)"
        )
    return plan


def _write_summary(run: Run, directory: RunDirectory | None, summary: dict[str, Any]) -> None:
    if directory is not None:
        directory.mark("trained", step=run.step)
    try:
        atomic_write_json(run.output_dir / "summary.json", summary)
    except OSError as exc:
        raise SummaryNotWritten(
            f"training finished and its artifacts are saved in {run.output_dir}, but summary.json could not be "
            f"written ({exc.strerror or exc}); the model is usable (`adapt eval {run.output_dir}` recomputes its "
            f"metrics), and `adapt run {run.output_dir} --resume` writes the summary again"
        ) from None
    if directory is not None:
        directory.finish()


class SummaryNotWritten(AdaptError):
    """Training and its artifacts are complete; only summary.json could not be written."""
