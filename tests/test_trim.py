"""task.trim_top_block: the top block of a first-token classifier computes only the first token's row, and the
classifier's outputs and every gradient are those of the whole block."""

from __future__ import annotations

import pytest
import torch

from adapt.speed.trim import is_trimmed, trim_top_block

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 99}


def _model(family: str, attention: str, dropout: float = 0.0, auto: str = "AutoModelForSequenceClassification"):
    import transformers

    config = transformers.AutoConfig.for_model(
        family,
        **TINY,
        num_labels=3,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=64,
        **({"embedding_size": 32} if family == "electra" else {}),
    )
    config._attn_implementation = attention
    torch.manual_seed(0)
    return getattr(transformers, auto).from_config(config)


def _batch(lengths=(9, 4, 12, 1)) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    ids = torch.randint(5, 99, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask, "labels": torch.tensor([0, 2, 1, 2])}


def _outputs_and_grads(model, batch):
    model.train()
    torch.manual_seed(3)
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.logits.detach(), grads


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_trimmed_top_block_gives_the_classifiers_outputs_and_gradients(family, attention):
    whole, trimmed = _model(family, attention), _model(family, attention)
    assert trim_top_block(trimmed) and is_trimmed(trimmed) and not is_trimmed(whole)
    batch = _batch()
    hidden = trimmed.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    assert hidden.shape[1] == 1  # the top block returned the first token's row only
    logits, grads = _outputs_and_grads(whole, batch)
    trimmed_logits, trimmed_grads = _outputs_and_grads(trimmed, batch)
    torch.testing.assert_close(trimmed_logits, logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == trimmed_grads.keys() and len(grads) == sum(1 for _ in whole.parameters())
    for name in grads:
        torch.testing.assert_close(trimmed_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_lora_layers_in_a_trimmed_block_train_as_in_the_whole_one():
    from peft import LoraConfig, get_peft_model

    from adapt_lora.fused import fuse_lora_layers

    pair = []
    for trim in (False, True):
        model = _model("bert", "sdpa")
        if trim:
            trim_top_block(model)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key", "value", "dense"], task_type="SEQ_CLS")
        model = get_peft_model(model, lora)
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
        fuse_lora_layers(model)
        pair.append(model)
    assert is_trimmed(pair[1]) and not is_trimmed(pair[0])
    (logits, grads), (trimmed_logits, trimmed_grads) = (_outputs_and_grads(m, _batch()) for m in pair)
    torch.testing.assert_close(trimmed_logits, logits, rtol=1e-5, atol=1e-6)
    assert any("layer.1.attention.self.query.lora_A" in name for name in trimmed_grads)
    for name in grads:
        torch.testing.assert_close(trimmed_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_plain_key_and_value_weights_act_on_the_query_instead_of_every_token(attention):
    """Keys and values of nn.Linear are absorbed into the first query: the same logits and gradients as projecting
    every token (forced by a hook on the key projection, which must see every token), under attention dropout too
    (eager draws the same masks either way), with fewer FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _model("bert", attention, dropout=0.3)
    trim_top_block(model)
    batch = _batch()

    def step():
        with FlopCounterMode(display=False) as flops:
            logits, grads = _outputs_and_grads(model, batch)
        return logits, grads, flops.get_total_flops()

    logits, grads, absorbed_flops = step()
    seen = []
    key = model.bert.encoder.layer[-1].attention.self.key
    handle = key.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    projected_logits, projected_grads, projected_flops = step()
    handle.remove()
    assert seen == [torch.Size([4, 12, 32])] and absorbed_flops < projected_flops
    if attention == "eager":
        torch.testing.assert_close(logits, projected_logits, rtol=1e-5, atol=1e-6)
        assert grads.keys() == projected_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], projected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_hook_on_the_top_block_sees_every_row():
    from adapt import on_last_block_output

    whole, trimmed = _model("bert", "sdpa"), _model("bert", "sdpa")
    trim_top_block(trimmed)
    seen = []
    handle = on_last_block_output(trimmed, lambda block, hidden: seen.append(hidden.shape))
    batch = _batch()
    trimmed.eval(), whole.eval()
    with torch.no_grad():
        torch.testing.assert_close(trimmed(**batch).logits, whole(**batch).logits)
    assert seen == [torch.Size([4, 12, 32])]
    handle.remove()
    with torch.no_grad():
        assert trimmed.base_model(input_ids=batch["input_ids"])[0].shape[1] == 1  # trimmed again without it


@pytest.mark.parametrize(
    ("family", "auto"),
    [("bert", "AutoModelForTokenClassification"), ("gpt2", "AutoModelForSequenceClassification")],
)
def test_models_whose_head_reads_other_tokens_are_left_whole(family, auto):
    model = _model(family, "sdpa", auto=auto) if family == "bert" else _gpt2()
    assert not trim_top_block(model) and not is_trimmed(model)


def _gpt2():
    import transformers

    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=64, num_labels=2)
    return transformers.GPT2ForSequenceClassification(config)


def test_a_run_trims_and_the_prefix_cache_keeps_it(train_tiny):
    run, _, summary = train_tiny()
    assert summary["throughput"]["trimmed_top_block"] is True and is_trimmed(run.model)
    # head-only's cache ends past the top block: it stores the whole block's output, then gives the trim back
    run, _, summary = train_tiny(methods={"head-only": {}}, output={"overwrite": True}, train={"epochs": 2})
    assert summary["head-only"]["hits"] > 0
    assert is_trimmed(run.unwrapped_model) and summary["throughput"]["trimmed_top_block"] is True
    _, _, summary = train_tiny(task={"trim_top_block": False}, output={"overwrite": True})
    assert summary["throughput"]["trimmed_top_block"] is False
    # the key of recipes and run directories written before the trim was the head's still turns it off
    _, _, summary = train_tiny(model={"trim_top_block": False}, output={"overwrite": True})
    assert summary["throughput"]["trimmed_top_block"] is False


def test_the_trim_is_the_heads_a_head_that_does_not_declare_it_keeps_the_whole_block(train_tiny, monkeypatch):
    from adapt_sequence_classification import SequenceClassification

    monkeypatch.setattr(SequenceClassification, "reads_first_token", False)  # a head whose task reads every row
    run, _, summary = train_tiny()
    assert summary["throughput"]["trimmed_top_block"] is False and not is_trimmed(run.model)


@pytest.mark.parametrize("head", ["multi-label", "regression"])
def test_the_other_first_token_heads_trim_too(head):
    from adapt.plugin.manager import Catalogue

    entry = Catalogue.discover().entries[head]
    assert entry.factory.reads_first_token is True and "trim_top_block" in entry.info.table.model_fields
