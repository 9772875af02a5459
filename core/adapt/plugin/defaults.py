"""The core's fallback answers to "provide X" hooks, registered as plugin `adapt.plugin.defaults` with
`trylast`, so any plugin's answer takes precedence."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapt import AdaptError, decay_groups, hookimpl

if TYPE_CHECKING:
    import torch

    from adapt.run.context import Run


@hookimpl(trylast=True)
def adapt_param_groups(run: Run) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: matrices decay, vectors (biases, norms) do not."""
    return decay_groups(p for p in run.model.parameters() if p.requires_grad)


@hookimpl(trylast=True)
def adapt_compute_loss(outputs: Any) -> torch.Tensor:
    loss = getattr(outputs, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: the head's collator must put `labels` in the batch")
    return loss


@hookimpl(trylast=True)
def adapt_prediction_tensor(run: Run, outputs: Any) -> torch.Tensor:
    logits = getattr(outputs, "logits", None)
    if logits is None:
        fields = ", ".join(k for k in getattr(outputs, "keys", lambda: [])()) or type(outputs).__name__
        raise AdaptError(
            f"the model of head '{run.recipe.head}' returns no `logits` (it returns: {fields}); the head must say "
            "which output stands for its prediction (adapt_prediction_tensor, or Head.prediction_tensor)"
        )
    return logits


@hookimpl(trylast=True)
def adapt_make_optimizer(run: Run, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """`train.optimizer` with `[train.optimizer_options]`."""
    from adapt.train.optimizer import build_optimizer

    return build_optimizer(run.recipe.train, run.accelerator.device, param_groups)
