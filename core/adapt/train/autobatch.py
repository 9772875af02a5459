"""`train.batch_size = "auto"`: the largest micro-batch that fits, with gradient accumulation keeping
`train.effective_batch_size`."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from adapt.errors import AdaptError
from adapt.model.inference import model_inputs

if TYPE_CHECKING:
    from adapt.plan.planner import Plan
    from adapt.plugin.hooks import Hooks
    from adapt.recipe.loader import Recipe
    from adapt.run.context import Run

# Without an effective batch size, "auto" stops here: past it a larger batch changes the optimisation (fewer,
# larger steps) more than it speeds the run up.
AUTO_CAP = 128


def accumulate(batch: int, effective: int | None) -> tuple[int, int]:
    """(micro-batch, accumulation steps) for `effective` rows per optimizer step with micro-batches of at most
    `batch` rows: as few steps as possible, then micro-batches as even as possible."""
    if effective is None:
        return batch, 1
    steps = math.ceil(effective / batch)
    return math.ceil(effective / steps), steps


def with_batch(recipe: Recipe, batch: int) -> Recipe:
    """`recipe` with the micro-batch chosen and the accumulation that keeps its effective batch."""
    batch, steps = accumulate(batch, recipe.train.effective_batch_size)
    train = recipe.train.model_copy(update={"batch_size": batch, "grad_accum_steps": steps})
    return dataclasses.replace(recipe, train=train)


def start_size(plan: Plan | None, recipe: Recipe) -> int:
    """The plan's largest batch, capped; without a plan there is nothing to go on."""
    if plan is None or plan.capacity is None:
        raise AdaptError(
            'train.batch_size = "auto" needs the memory plan, which could not be made here (see the note '
            "above); set a number"
        )
    largest = plan.largest_batch()
    if largest < 1:
        raise AdaptError(
            f'train.batch_size = "auto": not even one row of {plan.length} tokens fits {plan.device} '
            f"by the memory plan; {'; '.join(plan.advice()) or 'see adapt plan'}"
        )
    return min(largest, recipe.train.effective_batch_size or AUTO_CAP)


def largest_that_runs(run: Run, hooks: Hooks, start: int) -> int:
    """On CUDA: one forward and backward pass on the longest training rows at `start` rows, then smaller
    (Accelerate's find_executable_batch_size: 10% less after each out-of-memory error) until one runs."""
    import torch
    from accelerate.utils import find_executable_batch_size, send_to_device

    from adapt.model.build import longest_rows

    train = run.encoded["train"]
    collate = hooks.make_collator(run=run)
    model, acc = run.model, run.accelerator
    if not getattr(model, "hf_device_map", None):
        model.to(acc.device)
    model.train()

    @find_executable_batch_size(starting_batch_size=start)
    def attempt(batch_size: int) -> int:
        batch = send_to_device(collate(longest_rows(train, batch_size)), acc.device)
        try:
            with acc.autocast():
                outputs = model(**model_inputs(batch))
                loss = hooks.compute_loss(run=run, batch=batch, outputs=outputs)
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
        return batch_size

    chosen = attempt()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return chosen
