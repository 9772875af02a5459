"""`adapt plan`'s table: a plan stage by stage, then the verdict, the largest batch that fits and the advice."""

from __future__ import annotations

from adapt.plan.device import gib_text
from adapt.plan.planner import CUDA_CONTEXT_BYTES, Plan


def render_plan(plan: Plan, console) -> None:
    """The plan as a table, stage by stage, then the verdict, the largest batch and the advice."""
    from rich.table import Table

    table = Table(title=f"training memory of {plan.model}", title_justify="left")
    table.add_column("stage")
    table.add_column("size", justify="right")
    table.add_column("what", style="dim")
    table.add_row("parameters", f"{plan.params_total:,}", f"{plan.params_trainable:,} trainable")
    for kind, size in plan.weights.items():
        table.add_row(f"weights ({kind})", gib_text(size), "")
    table.add_row("gradients", gib_text(plan.gradients), "the trainable parameters' dtype")
    table.add_row("optimizer state", gib_text(plan.optimizer_state), plan.optimizer)
    tokens = f"batch {plan.batch_size} x {plan.length} tokens ({plan.length_source})"
    for ckpt, size in ((False, plan.activations_without_checkpointing), (True, plan.activations_with_checkpointing)):
        chosen = "  <- as configured" if ckpt == plan.gradient_checkpointing else ""
        label = "activations, checkpointed" if ckpt else "activations"
        table.add_row(label, gib_text(size), f"{tokens}{chosen}" if not ckpt else chosen.strip())
    table.add_row("backward working memory", gib_text(plan.backward_working), "the largest saved tensor's gradient x2")
    if plan.device_kind == "cpu":
        live = sum(plan.weights.values()) + plan.gradients + plan.optimizer_state + plan.activations
        extra = plan.planned_peak_bytes - live - plan.backward_working
        table.add_row("CPU process and allocator", gib_text(extra), "resident memory above the live tensors (fitted)")
    table.add_row("[bold]planned peak[/bold]", f"[bold]{gib_text(plan.planned_peak_bytes)}[/bold]", plan.precision)
    if plan.device_kind == "cuda":
        table.add_row("CUDA context", gib_text(CUDA_CONTEXT_BYTES), "outside torch's allocator")
    console.print(table)
    if plan.capacity is None:
        console.print(f"{plan.device}: capacity unknown")
    else:
        verdict = "[green]fits[/green]" if plan.fits else "[red]does not fit[/red]"
        console.print(f"{verdict}: {gib_text(plan.needed)} of {gib_text(plan.capacity)} ({plan.device})")
        console.print(
            f"largest batch that fits: {plan.largest_batch()} x {plan.length} tokens "
            f"(checkpointing {'on' if plan.gradient_checkpointing else 'off'})"
        )
    for tip in plan.advice():  # tips name recipe tables ([methods.int8]): text, not rich markup
        console.print(f"  to fit: {tip}", markup=False)
    for note in plan.notes:
        console.print(f"note: {note}", style="dim", markup=False)
