"""Inference over encoded examples, for heads' `adapt_predict` and for checking exports."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from adapt.run.context import Run
from adapt.train.batching import sorted_batches

if TYPE_CHECKING:
    import torch

#: Batch keys that begin with this never reach the model: per-example data that a head's collator passes on to its
#: loss and metrics (which example a window belongs to, character offsets). Every other key is a model input.
EXAMPLE_DATA_PREFIX = "example_"


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without its per-example data (keys beginning with `EXAMPLE_DATA_PREFIX`): what the model is called
    with. The loss (`adapt_compute_loss`, `adapt_loss_terms`) and the metrics (`Metrics.update`) get the whole batch."""
    if not any(key.startswith(EXAMPLE_DATA_PREFIX) for key in batch):
        return batch
    return {key: value for key, value in batch.items() if not key.startswith(EXAMPLE_DATA_PREFIX)}


def forward_batches(
    run: Run, features: Sequence[dict[str, Any]], collate: Callable, batch_size: int = 32
) -> Iterator[tuple[list[int], dict[str, torch.Tensor], Any]]:
    """Run `run.model` over encoded examples in length-sorted batches (little padding), in inference mode.

    Yields (indices of the examples in `features`, the batch on the model's device, the model's outputs)."""
    import torch
    from accelerate.utils import send_to_device

    was_training = run.model.training
    run.model.eval()
    try:
        with torch.inference_mode():
            for indices in sorted_batches([len(f["input_ids"]) for f in features], batch_size):
                batch = send_to_device(collate([features[i] for i in indices]), run.accelerator.device)
                yield indices, batch, run.model(**model_inputs(batch))
    finally:
        run.model.train(was_training)


def example_logits(
    run: Run,
    features: Sequence[dict[str, Any]],
    collate: Callable,
    pick: Callable[[Any], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Each example's logits (or what `pick(outputs)` takes from the outputs: the head's prediction tensor), in
    example order, as float32 on the CPU; per-token tensors are cut to the example's own tokens (no padding), so
    they line up with its `input_ids` and `labels`."""

    def without_labels(rows: list[dict[str, Any]]) -> dict[str, Any]:
        # logits alone: given labels, a head may compute logits only where they are (causal-lm's response tokens)
        return {key: value for key, value in collate(rows).items() if key != "labels"}

    found: dict[int, torch.Tensor] = {}
    for indices, batch, outputs in forward_batches(run, features, without_labels):
        logits = (pick(outputs) if pick is not None else outputs.logits).float().cpu()
        mask = batch.get("attention_mask")
        for row, index in enumerate(indices):
            value = logits[row]
            if mask is not None and value.dim() >= 2 and value.shape[0] == mask.shape[1]:
                value = value[mask[row].bool().cpu()]
            found[index] = value
    return [found[i] for i in range(len(features))]
