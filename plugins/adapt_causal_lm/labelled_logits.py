"""The LM head computes logits only where the next token carries a label (`task.logits_for_labels_only`).

In instruction tuning only response tokens carry labels (the prompt and the padding are -100), yet a causal LM
computes a vocabulary-sized row of logits at every position, and its loss upcasts them all to float32: for 4 x 512
tokens and Qwen2.5's 152k vocabulary, 0.6 GB of bf16 logits and 1.2 GB more upcast, each step, most of it for
prompt tokens that no loss reads. Here the output layer (the vocabulary projection) gets only the rows of the
positions whose next token is labelled, and the loss is computed from those rows: the same value as the model's own
loss (mean over the labelled tokens, or their sum over `num_items_in_batch` where given) and the same gradients, up
to rounding (tested).

`outputs.logits` of a call with labels is then 2-D, (labelled tokens, vocabulary), in the order of
`labelled_targets(labels)`; a call without labels (generation, `example_logits`) gets every position's logits.
On the meta device (`adapt plan`) labels have no values: the plan's collator tells how many positions its batch
labels (`count_labelled`), and without data every position but the last counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapt_causal_lm.encode import IGNORED

if TYPE_CHECKING:
    import torch


def labelled_targets(labels: torch.Tensor) -> torch.Tensor:
    """The labelled next tokens, row after row: position t of a row predicts its token t + 1."""
    following = labels[:, 1:]
    return following[following != IGNORED]


class LabelledLogits:
    """Forward hooks on a causal LM: its call takes the labels out of the model's hands, its output layer gets the
    labelled positions' rows only, and the call's output gets the loss of those rows."""

    def __init__(self, model: torch.nn.Module, output_layer: torch.nn.Module):
        self.positions: torch.Tensor | int | None = None  # for the output layer: (batch, length) bool; meta: a count
        self.planned: int | None = None  # labelled positions of the plan's batch (`count_labelled`)
        self.pending: tuple[torch.Tensor, torch.Tensor, Any] | None = None  # labels, targets, num_items_in_batch
        model.register_forward_pre_hook(self._on_call, with_kwargs=True)
        model.register_forward_hook(self._after_call)
        output_layer.register_forward_pre_hook(self._on_output_layer)

    def _on_call(self, module, args, kwargs):
        self.positions = self.pending = None
        labels = kwargs.get("labels")
        returns_dict = kwargs.get("return_dict")
        if returns_dict is None:
            returns_dict = getattr(getattr(module, "config", None), "return_dict", True)
        if labels is None or returns_dict is False:  # a tuple has no field to put the loss in: left as it was
            return None
        import torch

        if labels.is_meta:
            rows = self.planned if self.planned is not None else labels[:, 1:].numel()
            self.positions, targets = rows, labels.new_empty(rows)
        else:
            following = labels[:, 1:]
            labelled = following != IGNORED
            self.positions = torch.zeros_like(labels, dtype=torch.bool)
            self.positions[:, :-1] = labelled
            targets = following[labelled]  # labelled_targets(labels), the mask made once
        self.pending = (labels, targets, kwargs.get("num_items_in_batch"))
        return args, {**kwargs, "labels": None}

    def _on_output_layer(self, module, args):
        positions, self.positions = self.positions, None
        if positions is None:
            return None
        hidden = args[0]
        if isinstance(positions, int):  # meta: as many rows, whichever they are
            rows = hidden[:, :-1].reshape(-1, hidden.shape[-1])[:positions]
        else:
            rows = hidden[positions.to(hidden.device)]
        return (rows, *args[1:])

    def count_labelled(self, labels: torch.Tensor) -> None:
        """Given the plan's batch as the collator made it (with values), before it goes to the meta device."""
        self.planned = labelled_targets(labels).numel()

    def _after_call(self, module, args, output):
        pending, self.pending = self.pending, None
        if pending is None or getattr(output, "logits", None) is None:
            return None
        import torch
        from torch.nn import functional

        labels, targets, items = pending
        logits = output.logits
        if self.positions is not None:  # the output layer was not called: every position's logits came back
            self.positions = None
            logits, targets = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        targets = targets.to(logits.device)
        total = functional.cross_entropy(logits.float(), targets, ignore_index=IGNORED, reduction="sum")
        if items is None:  # the mean over the labelled tokens; a batch without any gives 0, not nan (and no sync)
            items = (targets != IGNORED).sum().clamp(min=1)
        loss = total / (items.to(total.device) if isinstance(items, torch.Tensor) else items)
        return type(output)(**{**output, "loss": loss})


def install(model: torch.nn.Module) -> LabelledLogits | None:
    """Install `LabelledLogits` on a loaded causal LM (before any method wraps it); None where the model has no
    output layer to hook (its logits are then computed everywhere, as before)."""
    output_layer = model.get_output_embeddings()
    if output_layer is None:
        return None
    return LabelledLogits(model, output_layer)
