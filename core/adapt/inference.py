"""Inference over encoded examples, for heads' `adapt_predict` and for checking exports."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from adapt.types import Run


def forward_batches(
    run: Run, features: Sequence[dict[str, Any]], collate: Callable, batch_size: int = 32
) -> Iterator[tuple[list[int], dict[str, torch.Tensor], Any]]:
    """Run `run.model` over encoded examples in length-sorted batches (little padding), in inference mode.

    Yields (indices of the examples in `features`, the batch on the model's device, the model's outputs)."""
    from accelerate.utils import send_to_device

    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    was_training = run.model.training
    run.model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                batch = send_to_device(collate([features[i] for i in indices]), run.accelerator.device)
                yield indices, batch, run.model(**batch)
    finally:
        run.model.train(was_training)
