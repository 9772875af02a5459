"""The training loop: linear, Accelerate-driven, with a hook call at each named point.

It checkpoints as it goes (adapt.run.checkpoint) and restores its own position from one, so a resumed run takes
the same batches and random numbers as the one that was interrupted. The speed-ups it trains under come through
one seam, adapt.speed.seam.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from adapt.errors import AdaptError
from adapt.model.build import encode, token_lengths
from adapt.model.inference import model_inputs
from adapt.plugin.hooks import Hooks
from adapt.run.checkpoint import Checkpointer
from adapt.run.context import Run
from adapt.run.interrupts import Interrupted, StopSignals
from adapt.run.report import run_precision
from adapt.run.throughput import StepFlops, throughput_summary
from adapt.speed.seam import SpeedUps
from adapt.train.batching import LengthGroupedBatches, padding_efficiency
from adapt.train.evaluation import Evaluator
from adapt.train.memory_advice import out_of_memory_advice
from adapt.train.nonfinite import NonFiniteGuard

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def _batch_size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


class TrainingLoop:
    def __init__(
        self, run: Run, hooks: Hooks, stop: StopSignals | None = None, plan=None, speed: SpeedUps | None = None
    ):
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
        self.speed = speed or SpeedUps(run)
        self.speed.note_model()
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
        names = getattr(hooks.make_metrics(run=run), "names", None)  # before training: checked by whoever needs them
        run.metric_names = list(names()) if callable(names) else None
        hooks.on_train_start(run=run)
        self.stop.check()
        self.stop.graceful = True
        try:
            with self.speed.training():
                self._loop()
            # Training is over and its last step checkpointed: a signal now stops at once instead of asking for a
            # step that will never come (the final evaluation and saving would otherwise run to the end).
            self.stop.graceful = False
            try:
                self.stop.check()  # a signal that came during the last step
                self._finish()
            except Interrupted as stopped:
                raise Interrupted(stopped.signum, self._stopped_after_training(stopped.signum)) from None
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
                        outputs = model(**model_inputs(batch))
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
                window.lr = run.scheduler.get_last_lr()[0]  # the rate this step used, as HF Trainer and TRL log
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

    def _stopped_after_training(self, signum: int) -> str:
        run, name = self.run, signal.Signals(signum).name
        saved = self.checkpointer.last_step == run.step
        then = (
            f"checkpoint step-{run.step} holds the trained model: `adapt run {run.output_dir} --resume` evaluates and "
            "saves it"
            if saved
            else "no checkpoint of that step was written, so its model is lost (train.keep_checkpoints = 0?)"
        )
        return f"stopped by {name} after training's last step ({run.step}), before its evaluation and artifacts: {then}"

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
        run, acc = self.run, self.run.accelerator
        found = throughput_summary(
            self.flops,
            run.samples_seen * self.mean_length,
            self.clock.total,
            acc.device,
            run_precision(acc),
            acc.num_processes,
        )
        return {**found, **self.speed.summary()}

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
            stats["stopped_early"], stats["stop_kind"] = run.stop_reason, run.stop_kind
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
        self.lr: float | None = None  # the learning rate of the latest optimizer step
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
            "lr": self.lr if self.lr is not None else run.scheduler.get_last_lr()[0],
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
