"""The step-time work of issue 12: fused LoRA layers compute what PEFT's do, the fast CPU dropout keeps
dropout's rate and reproducibility and gives torch's kernel back, and a run reports its useful FLOP/s."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from adapt.speed.cpu import fast_dropout, keep_freed_memory


def _lora_pair(model_dir, **lora):
    """The same tiny BERT + LoRA twice (B matrices made non-zero), one with fused layers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from adapt_lora.fused import fuse_lora_layers

    models = []
    for fused in (False, True):
        torch.manual_seed(0)
        base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
        options = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "key", "value", "dense"], **lora}
        model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", **options))
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
        count = fuse_lora_layers(model) if fused else 0
        models.append((model, count))
    return models


def _loss_and_grads(model, batch, autocast: bool = False):
    model.train()
    torch.manual_seed(2)  # the same dropout masks in both models
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out.logits.detach().float(), grads


def test_fused_lora_layers_give_peft_outputs_and_gradients(tiny_bert_dir, sample_batch):
    from transformers import AutoTokenizer

    (plain, _), (fused, count) = _lora_pair(tiny_bert_dir)
    assert count == 2 * 6 + 1  # query, key, value and the three "dense" of each of 2 layers, and the pooler's
    batch = sample_batch(AutoTokenizer.from_pretrained(tiny_bert_dir))
    batch["labels"] = torch.tensor([1, 0, 1, 0])
    logits, grads = _loss_and_grads(plain, batch)
    fused_logits, fused_grads = _loss_and_grads(fused, batch)
    torch.testing.assert_close(fused_logits, logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == fused_grads.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # under bf16 autocast the backward runs in bf16 as well, and the gradients stay fp32 like the weights
    logits, grads = _loss_and_grads(plain, batch, autocast=True)
    fused_logits, fused_grads = _loss_and_grads(fused, batch, autocast=True)
    torch.testing.assert_close(fused_logits, logits, rtol=0.05, atol=0.05)
    for name in grads:
        assert fused_grads[name].dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(fused_grads[name].flatten(), grads[name].flatten(), 0) > 0.98


def test_a_trained_base_bias_keeps_pefts_gradients(tiny_bert_dir, sample_batch):
    from transformers import AutoTokenizer

    (plain, _), (fused, _) = _lora_pair(tiny_bert_dir, bias="all")
    batch = sample_batch(AutoTokenizer.from_pretrained(tiny_bert_dir))
    batch["labels"] = torch.tensor([1, 0, 1, 0])
    _, grads = _loss_and_grads(plain, batch)
    _, fused_grads = _loss_and_grads(fused, batch)
    biases = [n for n in grads if n.endswith("query.base_layer.bias")]
    assert biases and all(grads[n].abs().sum() > 0 for n in biases)
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_layers_with_lora_dropout_keep_pefts_forward(tiny_bert_dir):
    (_, _), (_, count) = _lora_pair(tiny_bert_dir, lora_dropout=0.1)
    assert count == 0


def test_a_disabled_adapter_falls_back_to_the_base_model(tiny_bert_dir, sample_batch):
    from transformers import AutoTokenizer

    (plain, _), (fused, _) = _lora_pair(tiny_bert_dir)
    batch = sample_batch(AutoTokenizer.from_pretrained(tiny_bert_dir))
    for model in (plain, fused):
        model.eval()
    with plain.disable_adapter(), fused.disable_adapter(), torch.no_grad():
        torch.testing.assert_close(fused(**batch).logits, plain(**batch).logits)


def test_fast_dropout_keeps_the_rate_and_the_seed_and_gives_torchs_kernel_back():
    ones = torch.ones(400_000)
    torch.manual_seed(5)
    torchs = F.dropout(ones, 0.1, training=True)
    with fast_dropout():
        torch.manual_seed(5)
        first = F.dropout(ones, 0.1, training=True)
        torch.manual_seed(5)
        again = F.dropout(ones, 0.1, training=True)
        dropped = F.dropout(torch.ones(8, 50_000), 0.3, training=True)
    torch.manual_seed(5)
    after = F.dropout(ones, 0.1, training=True)
    assert torch.equal(first, again)  # reproducible from torch's seed (so a resumed run draws the same)
    assert not torch.equal(first, torchs)  # drawn by the fast generator, not torch's kernel
    assert torch.equal(after, torchs)  # torch's kernel is back
    assert (first == 0).float().mean().item() == pytest.approx(0.1, abs=0.003)
    assert (dropped == 0).float().mean().item() == pytest.approx(0.3, abs=0.003)
    assert sorted(dropped.unique().tolist()) == [0.0, pytest.approx(1 / 0.7)]


def test_fast_dropout_reaches_dropout_inside_attention():
    q = torch.randn(2, 2, 16, 8)
    with fast_dropout():
        torch.manual_seed(3)
        first = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
        torch.manual_seed(3)
        again = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    torch.manual_seed(3)
    torchs = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    assert torch.equal(first, again) and not torch.equal(first, torchs)


# In a fresh process: malloc a 24 MiB block, touch its pages, free it; print how much resident memory the free gave
# back to the OS. glibc serves a block that large with mmap and unmaps it on free, unless told to keep it.
_FREE_A_BLOCK = """
import ctypes, resource, sys
from adapt.speed.cpu import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
block = libc.malloc(24 * 2**20)
ctypes.memset(block, 1, 24 * 2**20)
held = resident()
libc.free(block)
print(held - resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_kept_on_linux():
    def given_back(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _FREE_A_BLOCK, mode], capture_output=True, text=True, check=True)
        return int(done.stdout)

    assert keep_freed_memory() is True
    assert given_back("default") > 16 * 2**20  # unmapped at once: the next step faults the pages in again
    assert given_back("keep") < 2 * 2**20  # kept in the heap for the next allocation


def test_a_run_reports_its_useful_flops_and_how_it_ran(train_tiny):
    run, _, summary = train_tiny()
    throughput = summary["throughput"]
    assert 2e4 < throughput["flops_per_token"] < 1e6  # ~16k weights in 2 blocks: forward 2x, backward ~2x more
    assert 0 < throughput["useful_flops_share"] < 1
    assert throughput["matmul_peak_flops_per_second"] > 1e9
    assert throughput["fast_dropout"] is True and throughput["keep_freed_memory"] is True
    assert summary["precision"] == "fp32"
    _, _, summary = train_tiny(train={"fast_dropout": False, "keep_freed_memory": False}, output={"overwrite": True})
    assert summary["throughput"]["fast_dropout"] is False


def test_check_does_not_tokenise(tiny_recipe, monkeypatch, capsys):
    """`adapt check` validates the recipe, data columns and model without tokenising a split."""
    from datasets import Dataset

    from adapt.commands.cli import main

    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    maps = []
    original = Dataset.map

    def recording_map(self, *args, **kwargs):
        maps.append(kwargs.get("desc"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Dataset, "map", recording_map)
    assert main(["check", str(tiny_recipe())]) == 0
    assert "192 train rows" in capsys.readouterr().out
    assert "tokenising" not in maps
    assert main(["run", str(tiny_recipe())]) == 0  # the recording sees what a run tokenises
    assert "tokenising" in maps


def test_the_matmul_peak_is_measured_within_its_time_budget():
    import time

    from adapt.run import throughput

    for precision in ("bf16", "fp32"):  # bf16 without native support took minutes at a fixed 2048 size
        throughput._peaks.pop(("cpu", precision), None)
        started = time.perf_counter()
        peak = throughput.matmul_peak(torch.device("cpu"), precision, budget_seconds=0.3)
        assert peak is not None and peak > 0
        assert time.perf_counter() - started < 3.0


def test_a_share_above_the_measured_peak_is_not_given():
    from adapt.run.throughput import StepFlops, matmul_peak, throughput_summary

    flops = StepFlops()
    flops.per_token = 1e12  # far more work per token than this CPU's matmuls could do in the time
    found = throughput_summary(flops, 1000.0, 1.0, torch.device("cpu"), "fp32", 1)
    assert found["matmul_peak_flops_per_second"] == round(matmul_peak(torch.device("cpu"), "fp32"))
    assert found["useful_flops_share"] is None and "no share is given" in found["useful_flops_share_note"]
