"""Greedy generation for `adapt predict`, batching prompts of equal length so no padding is ever needed
(left padding changes the positions some models see)."""

from __future__ import annotations

from itertools import groupby

from adapt import Run


def generate(run: Run, prompts: list[list[int]], eos: int, max_new_tokens: int, batch_size: int = 16) -> list[str]:
    import torch

    model, tokenizer = run.model, run.tokenizer
    device = run.accelerator.device
    texts: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    model.eval()
    with torch.inference_mode():
        for _, same_length in groupby(order, key=lambda i: len(prompts[i])):
            group = list(same_length)
            for start in range(0, len(group), batch_size):
                indices = group[start : start + batch_size]
                ids = torch.tensor([prompts[i] for i in indices], device=device)
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id,
                )
                for row, i in enumerate(indices):
                    new = out[row, ids.shape[1] :].tolist()
                    new = new[: new.index(eos)] if eos in new else new
                    texts[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
    return texts
