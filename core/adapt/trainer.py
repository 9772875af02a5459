"""The training loop: linear, Accelerate-driven, with a hook call at each named point."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from adapt.batching import LengthGroupedBatches, padding_efficiency
from adapt.build import build_model, start_run
from adapt.evaluation import Evaluator
from adapt.hooks import Hooks
from adapt.io import atomic_write_json, atomic_write_text
from adapt.manager import Catalogue
from adapt.recipe import Recipe
from adapt.report import run_summary
from adapt.types import Run

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def run_recipe(recipe: Recipe, catalogue: Catalogue) -> dict[str, Any]:
    """Everything `adapt run` does: build, train, evaluate, save; returns the summary."""
    run, hooks = start_run(recipe, catalogue)
    param_counts = build_model(run, hooks)
    if run.is_main_process:
        import tomli_w

        run.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.output_dir / "recipe.toml", tomli_w.dumps(recipe.to_dict()))
    loop = TrainingLoop(run, hooks)
    loop.train()
    summary = run_summary(run, loop.stats(), param_counts, hooks.summary(run=run))
    if run.is_main_process:
        atomic_write_json(run.output_dir / "summary.json", summary)
    hooks.on_train_end(run=run, summary=summary)
    return summary


def _batch_size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


class TrainingLoop:
    def __init__(self, run: Run, hooks: Hooks):
        self.run = run
        self.hooks = hooks
        self.train_seconds = 0.0
        self.final_metrics: dict[str, float] = {}
        self.epoch_seconds: list[float] = []
        self.padding_efficiency = 1.0

    def _loaders(self) -> tuple[DataLoader, LengthGroupedBatches]:
        run, cfg = self.run, self.run.recipe.train
        run.encoded = self.hooks.encode(run=run, dataset=run.dataset).with_format(None)
        collate = self.hooks.make_collator(run=run)
        train_lengths = [len(ids) for ids in run.encoded["train"]["input_ids"]]
        sampler = LengthGroupedBatches(
            train_lengths,
            cfg.batch_size,
            seed=cfg.seed,
            pool=cfg.length_pool,
            group_by_length=cfg.group_by_length,
        )
        self.padding_efficiency = padding_efficiency(train_lengths, sampler.batches())
        self.evaluator = Evaluator(
            run, self.hooks, run.encoded["eval"], collate, cfg.eval_batch_size or 2 * cfg.batch_size, cfg.num_workers
        )
        workers = {"num_workers": cfg.num_workers, "persistent_workers": cfg.num_workers > 0}
        train_dl = DataLoader(run.encoded["train"], batch_sampler=sampler, collate_fn=collate, **workers)
        return train_dl, sampler

    def train(self) -> None:
        from transformers import get_scheduler

        run, hooks, cfg, acc = self.run, self.hooks, self.run.recipe.train, self.run.accelerator
        train_dl, sampler = self._loaders()
        groups = hooks.param_groups(run=run)
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        model, optimizer, train_dl = acc.prepare(run.model, optimizer, train_dl)
        run.model, run.optimizer = model, optimizer

        steps_per_epoch = math.ceil(len(train_dl) / cfg.grad_accum_steps)
        run.max_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
        if cfg.max_steps is not None:
            run.max_steps = min(run.max_steps, cfg.max_steps)
        run.scheduler = get_scheduler(
            SCHEDULES[cfg.schedule],
            optimizer.optimizer,
            num_warmup_steps=round(cfg.warmup_ratio * run.max_steps),
            num_training_steps=run.max_steps,
        )

        hooks.on_train_start(run=run)
        try:
            self._loop(train_dl, sampler, steps_per_epoch)
        except BaseException as error:
            hooks.on_train_error(run=run, error=error)
            raise

    def _loop(self, train_dl: DataLoader, sampler: LengthGroupedBatches, steps_per_epoch: int) -> None:
        run, hooks, cfg, acc = self.run, self.hooks, self.run.recipe.train, self.run.accelerator
        model, optimizer = run.model, run.optimizer
        model.train()
        window = _LogWindow(acc.device)
        clock = _TrainClock()
        while run.step < run.max_steps:
            sampler.set_epoch(run.epoch)
            hooks.on_epoch_start(run=run, epoch=run.epoch)
            epoch_start = clock.total
            for batch in train_dl:
                with acc.accumulate(model):
                    outputs = model(**batch)
                    loss = hooks.compute_loss(run=run, batch=batch, outputs=outputs)
                    terms = hooks.loss_terms(run=run, batch=batch, outputs=outputs)
                    acc.backward(loss + sum(terms.values()) if terms else loss)
                    if acc.sync_gradients and cfg.max_grad_norm is not None:
                        acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                samples = _batch_size(batch) * acc.num_processes
                run.samples_seen += samples
                window.add(loss, terms, samples)
                if not acc.sync_gradients:
                    continue
                run.scheduler.step()
                run.step += 1
                hooks.on_step_end(run=run)
                if run.step % cfg.log_every == 0 or run.step == run.max_steps:
                    clock.lap()
                    hooks.on_log(run=run, logs=window.flush(run, steps_per_epoch, clock.take_window()))
                if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < run.max_steps:
                    clock.lap()
                    self.evaluator()
                    clock.resume()
                if run.step >= run.max_steps:
                    break
            clock.lap()
            self.epoch_seconds.append(round(clock.total - epoch_start, 2))
            run.epoch += 1
        self.train_seconds = clock.total
        self.final_metrics = self.evaluator()
        acc.wait_for_everyone()
        if run.is_main_process and run.recipe.output.save_artifacts:
            hooks.save_artifacts(run=run, directory=run.output_dir)
        acc.wait_for_everyone()

    def stats(self) -> dict[str, Any]:
        return {
            "eval": self.final_metrics,
            "train_seconds": round(self.train_seconds, 2),
            "epoch_seconds": self.epoch_seconds,
            "eval_seconds": round(self.evaluator.seconds, 2),
            "train_samples_per_second": round(self.run.samples_seen / max(self.train_seconds, 1e-9), 2),
            "padding_efficiency": round(self.padding_efficiency, 4),
        }


class _TrainClock:
    """Seconds spent training: the clock is stopped around evaluations."""

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
    """Losses summed on the device between logs, so the hot path never waits for a `.item()`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.terms: dict[str, torch.Tensor] = {}
        self.count = 0
        self.samples = 0

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], samples: int) -> None:
        self.loss += loss.detach().float()
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value.detach().float()
        self.count += 1
        self.samples += samples

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
        self.reset()
        return logs
