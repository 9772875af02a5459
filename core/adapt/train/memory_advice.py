"""The message for an out-of-memory error in training: where, what the plan expected, what would make it fit."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapt.run.context import Run


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
