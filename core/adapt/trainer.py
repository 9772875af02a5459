"""The training loop: linear, Accelerate-driven, with a hook call at each named point.

A run claims its output folder first (a lock; an earlier run moved aside, never mixed), checkpoints as it
goes, and resumes from a checkpoint exactly: same batches, same random numbers, same weights bit for bit
as the run that was not interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from adapt.autobatch import largest_that_runs, start_size, with_batch
from adapt.batching import LengthGroupedBatches, padding_efficiency
from adapt.build import build_model, encode, start_run, token_lengths
from adapt.checkpoint import Checkpointer
from adapt.compiling import compiled_dropout
from adapt.context import Run
from adapt.cpu_speed import fast_dropout, keep_freed_memory
from adapt.errors import AdaptError
from adapt.evaluation import Evaluator
from adapt.hooks import Hooks
from adapt.interrupts import Interrupted, StopSignals
from adapt.io import atomic_write_json, atomic_write_text
from adapt.manager import Catalogue
from adapt.nonfinite import NonFiniteGuard
from adapt.recipe import Recipe
from adapt.report import MemoryProbe, run_precision, run_summary, show_notes
from adapt.resume import check_resumable
from adapt.rundir import Claim, RunDirectory, RunDirectoryError, claim_output
from adapt.throughput import StepFlops, throughput_summary
from adapt.trim import is_trimmed

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


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
            summary_file = Path(recipe.output.dir) / "summary.json"
            return json.loads(summary_file.read_text()) if summary_file.is_file() else {}
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
    if recipe.train.keep_freed_memory and run.accelerator.device.type == "cpu":
        keep_freed_memory()  # before the memory baseline, so the measured peak is this run's alone
    encode(run, hooks)
    plan = plan_before_loading(run, catalogue, ignore_plan)
    check_free_space(run, plan)
    auto_batch = recipe.train.batch_size == "auto"
    if auto_batch and run.accelerator.device.type != "cuda":
        choose_batch(run, start_size(plan, recipe), "the memory plan")
    probe = MemoryProbe()  # the baseline: data loaded and encoded, model not yet
    param_counts = build_model(run, hooks)
    if auto_batch and run.accelerator.device.type == "cuda":
        choose_batch(run, largest_that_runs(run, hooks, start_size(plan, recipe)), "a trial step")
    if plan is not None and plan.batch_size != run.recipe.train.batch_size:
        plan = plan.at_batch(run.recipe.train.batch_size)
    recipe = run.recipe
    if run.is_main_process:
        atomic_write_text(run.output_dir / "recipe.toml", tomli_w.dumps(recipe.to_dict()))
    loop = TrainingLoop(run, hooks, stop, plan)
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


def plan_before_loading(run: Run, catalogue: Catalogue, ignore_plan: bool):
    """The memory plan's one line, printed before the weights load; on CUDA a plan over the device's memory
    stops the run here (unless `ignore_plan`). An estimate that cannot be made never stops a run."""
    from adapt.plan import make_plan, parse_device

    try:
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


def out_of_memory_advice(run: Run, error: BaseException, checkpoint_step: int | None, plan=None) -> str:
    """One message for an out-of-memory error: where, what the memory plan expected, and what would make the
    run fit, cheapest first (the plan's own advice, with its totals, when it had said the run would not fit),
    leaving out what the recipe already does."""
    cfg, methods = run.recipe.train, run.recipe.methods
    expected = ""
    if plan is not None and plan.capacity:
        needed, capacity = plan.needed / 2**30, plan.capacity / 2**30
        expected = f" The memory plan estimated {needed:.1f} GiB of the {capacity:.1f} GiB of "
        expected += (
            f"{plan.device}: over it (the run went on anyway)."
            if plan.fits is False
            else f"{plan.device}; the rest went to what it does not count (other processes on the device, "
            "fragmentation, a plugin's own tensors)."
        )
    advice = plan.advice() if plan is not None and plan.fits is False else []
    if advice:
        advice.append(f"a shorter data.max_length (now {run.recipe.data.max_length})")
        return _oom_message(run, error, checkpoint_step, expected, advice)
    if not cfg.gradient_checkpointing:
        advice.append("train.gradient_checkpointing = true (activations recomputed, about a third slower)")
    if "8bit" not in cfg.optimizer:
        advice.append('train.optimizer = "adamw-8bit" (optimizer state in 1 byte per value instead of 4)')
    if "full" in methods or "gradual-unfreezing" in methods:
        advice.append("[methods.lora] instead of training every weight")
    elif "int8" not in methods or getattr(run.recipe.table("int8"), "bits", None) != 4:
        advice.append("[methods.int8] bits = 4 under LoRA (a 4-bit base, as in QLoRA)")
    advice.append(
        f"train.batch_size = {max(1, cfg.batch_size // 2)} with train.grad_accum_steps = {cfg.grad_accum_steps * 2} "
        "(the same effective batch)"
    )
    advice.append(f"a shorter data.max_length (now {run.recipe.data.max_length})")
    return _oom_message(run, error, checkpoint_step, expected, advice)


def _oom_message(run: Run, error: BaseException, checkpoint_step: int | None, expected: str, advice: list[str]) -> str:
    cfg = run.recipe.train
    saved = f"; the last checkpoint is step-{checkpoint_step}" if checkpoint_step is not None else ""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"out of memory on {run.accelerator.device} during optimizer step {run.step + 1} (batches of "
        f"{cfg.batch_size}, up to {run.recipe.data.max_length} tokens): {first_line}.{expected} To fit, try: "
        + "; ".join(advice)
        + f"{saved} (those changes alter the training, so start again with --set output.overwrite=true)"
    )


class SummaryNotWritten(AdaptError):
    """Training and its artifacts are complete; only summary.json could not be written."""


def _batch_size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


class TrainingLoop:
    def __init__(self, run: Run, hooks: Hooks, stop: StopSignals | None = None, plan=None):
        self.run = run
        self.plan = plan  # the memory plan, for the out-of-memory message
        self.hooks = hooks
        self.stop = stop or StopSignals()
        self.final_metrics: dict[str, float] = {}
        self.epoch_seconds: list[float] = []
        self.epoch_started = 0.0  # train-clock reading when the current epoch began
        self.batches_in_epoch = 0  # micro-batches of the current epoch consumed (the data position)
        self.padding_efficiency = 1.0
        self.mean_length = 0.0  # real tokens per training example
        self.first_step_seconds: float | None = None  # from the command's start (adapt's import) to training
        self.flops = StepFlops()
        self.trimmed = is_trimmed(run.model)  # before a prefix cache takes the block's forward over
        self.clock = _TrainClock()
        self.window = _LogWindow(run.accelerator.device)
        cfg = run.recipe.train
        self.guard = NonFiniteGuard(cfg.nonfinite, cfg.max_nonfinite_skips, run.accelerator.device)
        self.checkpointer = Checkpointer(run, hooks)

    def _loaders(self) -> tuple[DataLoader, LengthGroupedBatches]:
        run, cfg = self.run, self.run.recipe.train
        if run.encoded is None:
            encode(run, self.hooks)
        collate = self.hooks.make_collator(run=run)
        train_lengths = token_lengths(run.encoded["train"])
        sampler = LengthGroupedBatches(
            train_lengths,
            cfg.batch_size,
            seed=cfg.seed,
            pool=cfg.length_pool,
            group_by_length=cfg.group_by_length,
        )
        self.padding_efficiency = padding_efficiency(train_lengths, sampler.batches())
        self.mean_length = sum(train_lengths) / max(len(train_lengths), 1)
        self.evaluator = Evaluator(
            run, self.hooks, run.encoded["eval"], collate, cfg.eval_batch_size or 2 * cfg.batch_size, cfg.num_workers
        )
        workers = {"num_workers": cfg.num_workers, "persistent_workers": cfg.num_workers > 0}
        # A generator of its own: starting an epoch must not draw from the global RNG that dropout uses, so
        # the random stream depends only on the optimizer steps taken (and a resume can restore it exactly).
        generator = torch.Generator().manual_seed(cfg.seed)
        train_dl = DataLoader(
            run.encoded["train"], batch_sampler=sampler, collate_fn=collate, generator=generator, **workers
        )
        return train_dl, sampler

    def train(self, checkpoint: Path | None = None) -> None:
        from transformers import get_scheduler

        run, hooks, cfg, acc = self.run, self.hooks, self.run.recipe.train, self.run.accelerator
        train_dl, _ = self._loaders()
        groups = hooks.param_groups(run=run)
        optimizer = hooks.make_optimizer(run=run, param_groups=groups)
        model, optimizer, self.train_dl = acc.prepare(run.model, optimizer, train_dl)
        run.model, run.optimizer = model, optimizer

        self.steps_per_epoch = math.ceil(len(self.train_dl) / cfg.grad_accum_steps)
        run.max_steps = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        if cfg.max_steps is not None:
            run.max_steps = min(run.max_steps, cfg.max_steps)
        run.scheduler = get_scheduler(
            SCHEDULES[cfg.schedule],
            optimizer.optimizer,
            num_warmup_steps=round(cfg.warmup_ratio * run.max_steps),
            num_training_steps=run.max_steps,
        )
        acc.prepare_scheduler(run.scheduler)  # so that save_state / load_state include it

        if checkpoint is not None:
            state, plugin_states = self.checkpointer.load(checkpoint)
            self._restore(state)
            run.resumed_from = checkpoint
            hooks.load_checkpoint_state(run=run, states=plugin_states)
        hooks.on_train_start(run=run)
        self.stop.graceful = True
        faster = cfg.fast_dropout and acc.device.type == "cpu"
        try:
            with fast_dropout() if faster else contextlib.nullcontext(), compiled_dropout(run):
                self._loop()
            self._finish()
        except BaseException as error:
            error.step = run.step  # type: ignore[attr-defined]
            hooks.on_train_error(run=run, error=error)
            if type(error).__name__ == "OutOfMemoryError":
                message = out_of_memory_advice(run, error, self.checkpointer.last_step, self.plan)
                raise AdaptError(message) from error
            raise
        finally:
            self.stop.graceful = False

    def _loop(self) -> None:
        run, hooks, cfg, acc = self.run, self.hooks, self.run.recipe.train, self.run.accelerator
        model, optimizer, clock, window, guard = run.model, run.optimizer, self.clock, self.window, self.guard
        flops, compiled = self.flops, run.compiled is not None
        # listed once: model.parameters() walks every module (180 on MiniLM), 2% of a small model's step
        parameters = list(model.parameters())
        model.train()
        if self.first_step_seconds is None:
            import adapt

            self.first_step_seconds = round(time.perf_counter() - adapt.IMPORTED_AT, 2)
        clock.resume()
        while run.step < run.max_steps and run.stop_reason is None:
            self.train_dl.set_epoch(run.epoch)
            if self.batches_in_epoch == 0:
                self.epoch_started = clock.total
                hooks.on_epoch_start(run=run, epoch=run.epoch)
                loader = self.train_dl
            else:  # resumed mid-epoch: the same epoch order, less the batches already trained on
                loader = acc.skip_first_batches(self.train_dl, self.batches_in_epoch)
            for batch in loader:
                with acc.accumulate(model):
                    with flops.first(batch, compiled):  # counts the run's first micro-batch only
                        outputs = model(**batch)
                        loss = hooks.compute_loss(run=run, batch=batch, outputs=outputs)
                        terms = hooks.loss_terms(run=run, batch=batch, outputs=outputs)
                        guard.observe(run.step + 1, loss, terms)
                        acc.backward(loss + sum(terms.values()) if terms else loss)
                    samples = _batch_size(batch) * acc.num_processes
                    window.add(loss, terms, samples)
                    if acc.sync_gradients:
                        if guard.drop_step(run.step + 1):
                            window.discard()
                        else:
                            if cfg.max_grad_norm is not None:
                                acc.clip_grad_norm_(parameters, cfg.max_grad_norm)
                            optimizer.step()
                            window.commit()
                        optimizer.zero_grad(set_to_none=True)
                self.batches_in_epoch += 1
                run.samples_seen += samples
                if not acc.sync_gradients:
                    continue
                run.scheduler.step()
                run.step += 1
                hooks.on_step_end(run=run)
                self._after_step(end_of_epoch=acc.gradient_state.end_of_dataloader)
                if run.step >= run.max_steps or run.stop_reason is not None:
                    break
            clock.lap()
            self.epoch_seconds.append(round(clock.total - self.epoch_started, 2))
            if run.stop_reason is not None:
                break  # finishing now: a checkpoint would only be deleted again
            run.epoch += 1
            self.batches_in_epoch = 0
            self._checkpoint()  # at each epoch end (and after the last step)
        clock.lap()

    def _after_step(self, end_of_epoch: bool) -> None:
        """Log, evaluate, checkpoint and obey a stop signal, as the step's number says."""
        run, cfg, clock = self.run, self.run.recipe.train, self.clock
        if run.step % cfg.log_every == 0 or run.step == run.max_steps:
            self.guard.check()
            clock.lap()
            self.hooks.on_log(run=run, logs=self.window.flush(run, self.steps_per_epoch, clock.take_window()))
        if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < run.max_steps:
            self.guard.check()
            clock.lap()
            self.evaluator()
            clock.resume()
        signum = self.stop.agreed(run.accelerator)
        due = run.step % cfg.checkpoint_interval == 0 and not end_of_epoch and run.step < run.max_steps
        if signum is not None or due:
            saved = self._checkpoint()
        if signum is not None:
            where = f"checkpoint {saved} written" if saved else "no checkpoint written (train.keep_checkpoints = 0)"
            resume = f"; resume with `adapt run {run.output_dir} --resume`" if saved else ""
            raise Interrupted(
                signum, f"stopped by {signal.Signals(signum).name} after optimizer step {run.step}: {where}{resume}"
            )

    def _checkpoint(self) -> Path | None:
        if not self.checkpointer.enabled:
            return None
        self.guard.check()  # never checkpoint weights that a non-finite loss has reached
        self.clock.lap()
        saved = self.checkpointer.save(self._state())
        self.clock.resume()
        if saved is not None:
            self.guard.last_checkpoint = str(saved)
        return saved

    def _finish(self) -> None:
        run, acc = self.run, self.run.accelerator
        self.guard.check()
        self.final_metrics = self.evaluator.at_step(run.step)
        acc.wait_for_everyone()
        if run.is_main_process and run.recipe.output.save_artifacts:
            try:
                self.hooks.save_artifacts(run=run, directory=run.output_dir)
            except AdaptError as exc:
                kept = self.checkpointer.last_step
                again = f"; `adapt run {run.output_dir} --resume` saves them again" if kept is not None else ""
                raise AdaptError(f"training finished, but saving its artifacts failed: {exc}{again}") from exc
        acc.wait_for_everyone()

    # --- checkpoint state of the loop itself -----------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        run = self.run
        return {
            "step": run.step,
            "epoch": run.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "samples_seen": run.samples_seen,
            "train_seconds": self.clock.total,
            "window_seconds": self.clock.window,
            "epoch_seconds": self.epoch_seconds,
            "epoch_started": self.epoch_started,
            "eval_seconds": self.evaluator.seconds,
            "log_window": self.window.state(),
            "nonfinite": self.guard.state(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        run = self.run
        run.step, run.epoch, run.samples_seen = state["step"], state["epoch"], state["samples_seen"]
        self.batches_in_epoch = state["batches_in_epoch"]
        self.clock.total, self.clock.window = state["train_seconds"], state["window_seconds"]
        self.epoch_seconds = list(state["epoch_seconds"])
        self.epoch_started = state["epoch_started"]
        self.evaluator.seconds = state["eval_seconds"]
        self.window.load(state["log_window"])
        self.guard.load(state["nonfinite"])

    def _throughput(self) -> dict[str, Any]:
        run, cfg, acc = self.run, self.run.recipe.train, self.run.accelerator
        cpu = acc.device.type == "cpu"
        found = throughput_summary(
            self.flops,
            run.samples_seen * self.mean_length,
            self.clock.total,
            acc.device,
            run_precision(acc),
            acc.num_processes,
        )
        return {
            **found,
            "fast_dropout": cfg.fast_dropout and cpu,
            "keep_freed_memory": cfg.keep_freed_memory and cpu,
            "trimmed_top_block": self.trimmed,
        }

    def stats(self) -> dict[str, Any]:
        run = self.run
        stats = {
            "eval": self.final_metrics,
            "train_seconds": round(self.clock.total, 2),
            "epoch_seconds": self.epoch_seconds,
            "eval_seconds": round(self.evaluator.seconds, 2),
            "train_samples_per_second": round(run.samples_seen / max(self.clock.total, 1e-9), 2),
            "padding_efficiency": round(self.padding_efficiency, 4),
            "throughput": self._throughput(),
            "seconds_to_first_step": self.first_step_seconds,
            "checkpoints": self.checkpointer.stats(),
            "nonfinite_skipped_steps": self.guard.skipped,
        }
        if run.resumed_from is not None:
            stats["resumed_from"] = str(run.resumed_from)
        if run.stop_reason is not None:
            stats["stopped_early"] = run.stop_reason
        return stats


class _TrainClock:
    """Seconds spent training: the clock is stopped around evaluations and checkpoints."""

    def __init__(self) -> None:
        self.total = 0.0
        self.window = 0.0
        self.resume()

    def resume(self) -> None:
        self.mark = time.perf_counter()

    def lap(self) -> None:
        now = time.perf_counter()
        self.total += now - self.mark
        self.window += now - self.mark
        self.mark = now

    def take_window(self) -> float:
        seconds, self.window = self.window, 0.0
        return seconds


class _LogWindow:
    """Losses summed on the device between logs, so the hot path never waits for a `.item()`. A step's
    micro-batches are pending until the step is taken (or dropped for a non-finite loss)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()
        self.discard()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.terms: dict[str, torch.Tensor] = {}
        self.count = 0
        self.samples = 0

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], samples: int) -> None:
        self.pending.append((loss.detach().float(), {n: v.detach().float() for n, v in terms.items()}, samples))

    def commit(self) -> None:
        for loss, terms, samples in self.pending:
            self.loss += loss
            for name, value in terms.items():
                self.terms[name] = self.terms.get(name, 0.0) + value
            self.count += 1
            self.samples += samples
        self.pending = []

    def discard(self) -> None:
        self.pending: list[tuple[torch.Tensor, dict[str, torch.Tensor], int]] = []

    def flush(self, run: Run, steps_per_epoch: int, seconds: float) -> dict[str, float]:
        acc, n = run.accelerator, max(self.count, 1)
        logs = {
            "step": run.step,
            "epoch": round(run.step / steps_per_epoch, 4),
            "loss": acc.reduce(self.loss, "mean").item() / n,
            "lr": run.scheduler.get_last_lr()[0],
            "samples_per_second": self.samples / max(seconds, 1e-9),
        }
        for name, value in self.terms.items():
            logs[name] = acc.reduce(torch.as_tensor(value, device=self.device), "mean").item() / n
        if self.terms:  # what was minimised; `loss` stays the task's alone, comparable across recipes
            logs["total_loss"] = logs["loss"] + sum(logs[name] for name in self.terms)
        self.reset()
        return logs

    def state(self) -> dict[str, Any]:
        return {
            "loss": self.loss.cpu(),
            "terms": {n: torch.as_tensor(v).cpu() for n, v in self.terms.items()},
            "count": self.count,
            "samples": self.samples,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.loss = state["loss"].to(self.device)
        self.terms = {n: v.to(self.device) for n, v in state["terms"].items()}
        self.count, self.samples = state["count"], state["samples"]
