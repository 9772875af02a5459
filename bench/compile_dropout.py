"""What dropout costs a compiled CPU step: MiniLM + PEFT LoRA, in this process, eager or compiled per block.

    HF_HUB_OFFLINE=1 python bench/compile_dropout.py VARIANT

VARIANT is "eager" or "compiled", with any of "-nodrop" (dropout 0 in the model), "-fallback" (Inductor's
`fallback_random`: compiled code calls torch's random ops) and "-fastdrop" (adapt's fast dropout kernel),
e.g. `compiled-fallback-fastdrop`. Run each variant in a fresh process. 80 steps of batch 32 at seeded random
lengths of 15–60 tokens; prints the seconds of the first 10 steps (the compile) and tokens/s over steps 40–80.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time

import torch
from common import cpu_model
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def main(variant: str) -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    drop = 0.0 if "nodrop" in variant else 0.1
    model = AutoModelForSequenceClassification.from_pretrained(
        MODEL, num_labels=2, hidden_dropout_prob=drop, attention_probs_dropout_prob=drop
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"], task_type="SEQ_CLS")
    model = get_peft_model(model, lora)
    if "fallback" in variant:
        from torch._inductor import config as inductor

        inductor.fallback_random = True
    if variant.startswith("compiled"):
        for block in model.base_model.model.bert.encoder.layer:
            block.compile()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    lengths = [rng.randint(15, 60) for _ in range(80)]
    context = contextlib.nullcontext()
    if "fastdrop" in variant:
        from adapt.speed.cpu import fast_dropout

        context = fast_dropout()
    model.train()
    seconds = []
    with context:
        for length in lengths:
            start = time.perf_counter()
            ids = torch.randint(1000, 5000, (32, length))
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.randint(0, 2, (32,)))
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - start)
    tokens = sum(32 * length for length in lengths[40:])
    print(
        f"{cpu_model()}; {variant}: steps 1-10 {sum(seconds[:10]):.1f} s, "
        f"steady {tokens / sum(seconds[40:]):,.0f} tokens/s"
    )


if __name__ == "__main__":
    main(sys.argv[1])
