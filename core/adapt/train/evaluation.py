"""One evaluation pass, shared by training and `adapt eval`: each process takes its own share of the
length-sorted eval batches (every example exactly once), then the head's metric objects merge."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from adapt.model.inference import model_inputs
from adapt.plugin.hooks import Hooks
from adapt.plugin.manager import Catalogue
from adapt.run.context import Run
from adapt.train.batching import shard_batches, sorted_batches


class Evaluator:
    def __init__(self, run: Run, hooks: Hooks, dataset: Any, collate: Callable, batch_size: int, num_workers: int = 0):
        self.run = run
        self.hooks = hooks
        self.seconds = 0.0
        self.last: tuple[int, dict[str, float]] | None = None  # (step, metrics) of the latest pass
        lengths = [len(ids) for ids in dataset["input_ids"]]
        batches, self.counted = shard_batches(
            sorted_batches(lengths, batch_size), run.accelerator.process_index, run.accelerator.num_processes
        )
        self.loader = DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=collate,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            # Its own generator: an evaluation must not draw from the RNG that training's dropout uses, so
            # that when (and how often) a run evaluates does not change what it trains.
            generator=torch.Generator(),
        )

    def __call__(self) -> dict[str, float]:
        from accelerate.utils import gather_object, send_to_device

        run, acc = self.run, self.run.accelerator
        start = time.perf_counter()
        metrics = self.hooks.make_metrics(run=run)
        was_training = run.model.training
        run.model.eval()
        with torch.inference_mode():
            for batch, counted in zip(self.loader, self.counted, strict=True):
                batch = send_to_device(batch, acc.device)
                outputs = run.model(**model_inputs(batch))
                if counted:
                    metrics.update(outputs, batch)
        run.model.train(was_training)
        if acc.num_processes > 1:
            first, *others = gather_object([metrics])
            for other in others:
                first.merge(other)
            metrics = first
        result = {k: float(v) for k, v in metrics.compute().items()}
        self.seconds += time.perf_counter() - start
        self.last = (run.step, result)
        self.hooks.on_evaluate(run=run, metrics=result)
        return result

    def at_step(self, step: int) -> dict[str, float]:
        """The metrics of optimizer step `step`: those of the evaluation just made there (a run stopped right
        after evaluating), else a new pass."""
        if self.last is not None and self.last[0] == step:
            return self.last[1]
        return self()


def evaluate_run(
    run_dir: Path,
    catalogue: Catalogue,
    overrides: Sequence[str] = (),
    data_file: str | None = None,
    trust_preprocess: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """The head's metrics for a finished run on its recipe's eval split, or on `data_file` (a local file
    with the same columns, passed through the recipe's `data.preprocess`)."""
    from datasets import DatasetDict

    from adapt.loading.files import load_file, preprocess
    from adapt.run.restore import open_run

    splits = None if data_file else "eval"
    run, hooks = open_run(
        run_dir, catalogue, overrides, splits=splits,
        trust_preprocess=trust_preprocess,
        trust_remote_code=trust_remote_code,
    )
    if data_file:
        data = run.recipe.data
        given = DatasetDict(eval=load_file(data_file, "--data"))
        run.dataset = preprocess(given, data.preprocess, data.preprocess_batched)
    run.encoded = hooks.encode(run=run, dataset=run.dataset).with_format(None)
    cfg = run.recipe.train
    evaluator = Evaluator(
        run, hooks, run.encoded["eval"], hooks.make_collator(run=run), cfg.eval_batch_size or 2 * cfg.batch_size
    )
    return evaluator()
