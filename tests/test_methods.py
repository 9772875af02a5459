"""Adaptation methods on the tiny model: what they freeze stays bit-identical, what they train changes,
their artifacts restore identical logits, and impossible combinations are refused."""

from __future__ import annotations

import json

import pytest
import torch

from adapt.errors import RecipeError
from adapt.plugin.manager import Catalogue
from adapt.recipe.loader import load_recipe


def split_by_change(model, before):
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    return changed, set(before) - changed


def assert_restores_identical_logits(run, restore_tiny, sample_batch, run_dir, **changes):
    batch = sample_batch(run.tokenizer)
    restored = restore_tiny(run_dir, **changes)
    with torch.inference_mode():
        assert torch.equal(restored.model.eval()(**batch).logits, run.unwrapped_model.eval()(**batch).logits)


def test_full_trains_every_parameter_and_saves_a_standalone_model(
    train_tiny, restore_tiny, sample_batch, tiny_bert_dir, tmp_path
):
    run, before, summary = train_tiny(methods={"full": {}}, train={"epochs": 1, "learning_rate": 1e-3})
    changed, unchanged = split_by_change(run.unwrapped_model, before)
    assert all(p.requires_grad for p in run.unwrapped_model.parameters())
    # every weight matrix moved (a few vectors such as unused token-type rows may get no gradient)
    assert not [n for n in unchanged if before[n].ndim >= 2 and "token_type" not in n]
    from transformers import AutoModelForSequenceClassification

    standalone = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    batch = sample_batch(run.tokenizer)
    with torch.inference_mode():
        # adapt trims the top block (task.trim_top_block), plain transformers does not: equal up to rounding
        logits = run.unwrapped_model.eval()(**batch).logits
        torch.testing.assert_close(standalone(**batch).logits, logits, rtol=1e-5, atol=1e-6)
    assert_restores_identical_logits(run, restore_tiny, sample_batch, tmp_path / "run", methods={"full": {}})


@pytest.mark.parametrize("cache", [True, False])
def test_head_only_freezes_the_backbone(train_tiny, restore_tiny, sample_batch, tmp_path, cache):
    table = {"cache_features": cache}
    run, before, summary = train_tiny(methods={"head-only": table}, train={"epochs": 3})
    changed, unchanged = split_by_change(run.unwrapped_model, before)
    assert changed == {"classifier.weight", "classifier.bias"}
    assert all(n.startswith("bert.") for n in unchanged)
    assert_restores_identical_logits(run, restore_tiny, sample_batch, tmp_path / "run", methods={"head-only": table})


def test_head_only_serves_cached_features_after_the_first_epoch(tiny_recipe, tmp_path, adapt_cli):
    result = adapt_cli("run", str(tiny_recipe(methods={"head-only": {}}, train={"epochs": 3})))
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads((tmp_path / "run" / "summary.json").read_text())["head-only"]
    # epoch 1 (192 rows) and the one evaluation (64 rows) run the backbone; epochs 2 and 3 are served
    assert stats == {
        "feature_cache": True,
        "examples": 256,
        "mib": stats["mib"],
        "dtype": "float16",
        "hits": 384,
        "misses": 256,
        "unstored": 0,
    }
    assert not (tmp_path / "run" / "prefix-cache" / "head-only-p0.bin").exists()  # deleted when the run ends


def test_head_only_with_a_float32_cache_trains_exactly_as_without(train_tiny):
    _, _, cached = train_tiny(methods={"head-only": {"cache_dtype": "float32"}}, train={"epochs": 3})
    again = {"output": {"overwrite": True}, "train": {"epochs": 3}}
    _, _, uncached = train_tiny(methods={"head-only": {"cache_features": False}}, **again)
    assert cached["head-only"]["hits"] == 384 and uncached["head-only"] == {"feature_cache": False}
    assert cached["eval"] == uncached["eval"]


@pytest.fixture
def catalogue(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")
    return Catalogue.discover()


@pytest.mark.parametrize(
    "methods, reason",
    [
        (["full", "lora"], "'full' cannot be combined with 'lora': LoRA learns low-rank updates of a frozen base"),
        (
            ["lora", "head-only"],
            "'lora' cannot be combined with 'head-only': LoRA trains inside the backbone, which head-only keeps frozen",
        ),
    ],
)
def test_impossible_combinations_are_refused_with_the_reason(tiny_recipe, catalogue, methods, reason):
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe(methods={m: {} for m in methods}), catalogue.infos)
    assert any(reason in p for p in info.value.problems), info.value.problems


class Snapshots:
    """Copies a few parameters after every optimizer step, and each group's learning rate."""

    WATCHED = {
        "head": "classifier.weight",
        "block1": "bert.encoder.layer.1.attention.self.query.weight",
        "block0": "bert.encoder.layer.0.attention.self.query.weight",
        "embeddings": "bert.embeddings.word_embeddings.weight",
    }

    def __init__(self):
        self.initial = {}
        self.after_step = {}
        self.lrs = {}

    def adapt_on_train_start(self, run):
        params = dict(run.unwrapped_model.named_parameters())
        self.initial = {k: params[n].detach().clone() for k, n in self.WATCHED.items()}

    def adapt_on_step_end(self, run):
        params = dict(run.unwrapped_model.named_parameters())
        self.after_step[run.step] = {k: params[n].detach().clone() for k, n in self.WATCHED.items()}
        self.lrs[run.step] = [g["lr"] for g in run.optimizer.param_groups]

    def first_change(self, key):
        return min(s for s, p in self.after_step.items() if not torch.equal(p[key], self.initial[key]))


def test_gradual_unfreezing_unfreezes_one_group_at_a_time_from_the_top(
    tiny_recipe, restore_tiny, sample_batch, tmp_path
):
    from adapt.model.build import build_model, start_run
    from adapt.train.loop import TrainingLoop

    snapshots = Snapshots()
    catalogue = Catalogue.discover(extra={"snapshots": snapshots})
    table = {"every": 3, "unit": "step", "lr_decay": 2.0}
    recipe = load_recipe(
        tiny_recipe(methods={"gradual-unfreezing": table}, train={"epochs": 1, "learning_rate": 1e-3}),
        catalogue.infos,
    )
    run, hooks = start_run(recipe, catalogue)
    build_model(run, hooks)
    loop = TrainingLoop(run, hooks)
    loop.train()
    # groups: head (+ pooler), block 1, block 0, embeddings; one more every 3 steps, from step 4 on
    assert snapshots.first_change("head") == 1
    assert snapshots.first_change("block1") == 4
    assert snapshots.first_change("block0") == 7
    assert snapshots.first_change("embeddings") == 10
    # discriminative rates: each group down at half the rate of the one above; 0 while frozen
    lrs = snapshots.lrs[4]  # two optimizer groups (decay, no decay) per layer group
    assert lrs[2] == pytest.approx(lrs[0] / 2) and lrs[4] == 0.0 and lrs[6] == 0.0
    assert len(snapshots.lrs[1]) == len(snapshots.lrs[12]) == 8  # every group in the optimizer from the start
    summary = loop.stats()
    assert summary["epoch_seconds"] and run.step == 12
    assert_restores_identical_logits(
        run, restore_tiny, sample_batch, tmp_path / "run", methods={"gradual-unfreezing": table}
    )


def test_gradual_unfreezing_by_epoch(train_tiny, tmp_path):
    run, before, summary = train_tiny(methods={"gradual-unfreezing": {}}, train={"epochs": 2})
    changed, unchanged = split_by_change(run.unwrapped_model, before)
    # epoch 0 trains the head group, epoch 1 adds the top block; block 0 and the embeddings never train
    assert any(n.startswith("bert.encoder.layer.1.") for n in changed)
    assert not any(n.startswith(("bert.encoder.layer.0.", "bert.embeddings.")) for n in changed)


def tiny_families():
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    torch.manual_seed(0)
    small = {"num_labels": 2, "pad_token_id": 0}
    return {
        "bert": BertForSequenceClassification(
            BertConfig(
                vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **small
            )
        ),
        "gpt2": GPT2ForSequenceClassification(
            GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=1, **small)
        ),
        "llama": LlamaForSequenceClassification(
            LlamaConfig(
                vocab_size=64,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                intermediate_size=64,
                bos_token_id=1,
                eos_token_id=1,
                **small,
            )
        ),
    }


EXPECTED_SITES = {
    "bert": ["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense"],
    "gpt2": ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"],
    "llama": ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"],
}


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_adapters_are_placed_generically_and_start_as_the_identity(family):
    from adapt_adapters.inject import inject

    model = tiny_families()[family].eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    houlsby = inject(model, "houlsby", reduction_factor=4, activation="gelu")
    assert houlsby[:2] == EXPECTED_SITES[family] and len(houlsby) == 4
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, before)
    pfeiffer = inject(tiny_families()[family], "pfeiffer", reduction_factor=4, activation="relu")
    assert pfeiffer == [EXPECTED_SITES[family][1], EXPECTED_SITES[family][1].replace(".0.", ".1.")]


def test_adapters_name_the_model_class_when_there_are_no_blocks():
    from adapt_adapters.inject import inject

    with pytest.raises(ValueError, match="cannot find a stack of transformer blocks in Sequential"):
        inject(torch.nn.Sequential(torch.nn.Linear(4, 4)), "houlsby", 4, "relu")


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_adapters_train_only_adapters_and_head(train_tiny, restore_tiny, sample_batch, tmp_path, placement):
    table = {"placement": placement, "reduction_factor": 4}
    run, before, summary = train_tiny(methods={"adapters": table}, train={"epochs": 1})
    params = dict(run.unwrapped_model.named_parameters())
    for name, param in params.items():
        trained = name.startswith("classifier.") or ".adapter." in name
        assert param.requires_grad == trained, name
        assert torch.equal(param, before[name]) != trained, name  # frozen: bit-identical; trained: moved
    adapters = [n for n in params if ".adapter." in n]
    assert len(adapters) == (16 if placement == "houlsby" else 8)  # 4 tensors per adapter, 2 layers
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run" / "adapters" / "adapters.safetensors")
    assert set(saved) == set(adapters) | {"classifier.weight", "classifier.bias"}
    assert_restores_identical_logits(run, restore_tiny, sample_batch, tmp_path / "run", methods={"adapters": table})


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_base_with_lora_trains_on_cpu(train_tiny, restore_tiny, sample_batch, tmp_path, bits):
    import bitsandbytes as bnb

    methods = {"int8": {"bits": bits}, "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}}
    run, before, summary = train_tiny(methods=methods, train={"epochs": 1})
    model = run.unwrapped_model
    quantised = bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit
    layer = model.base_model.model.bert.encoder.layer[0]
    assert isinstance(layer.intermediate.dense, quantised)
    assert not isinstance(model.base_model.model.classifier.modules_to_save["default"], quantised)  # head in fp32
    changed, unchanged = split_by_change(model, before)
    assert any("lora_B" in n for n in changed) and any("classifier" in n for n in changed)
    assert not [n for n in changed if "lora_" not in n and "classifier" not in n]  # the base did not move
    memory = summary["int8"]
    assert memory["weights_mib_quantised"] < memory["weights_mib_unquantised"]
    assert memory["quantised_tensors"] == 13  # 6 linear layers x 2 blocks + the pooler; the head is kept
    assert_restores_identical_logits(run, restore_tiny, sample_batch, tmp_path / "run", methods=methods)


@pytest.mark.parametrize(
    "methods, reason",
    [
        (
            ["int8"],
            "'int8' needs one of adapters, head-only, lora, peft beside it ([methods.adapters]): a method that trains "
            "while "
            "every pretrained weight stays frozen",
        ),
        (["full", "int8"], "'full' cannot be combined with 'int8': 8-bit weights cannot be trained"),
        (["head-only", "gradual-unfreezing"], "'head-only' cannot be combined with 'gradual-unfreezing'"),
    ],
)
def test_more_impossible_combinations(tiny_recipe, catalogue, methods, reason):
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe(methods={m: {} for m in methods}), catalogue.infos)
    assert any(reason in p for p in info.value.problems), info.value.problems


def test_quantisation_is_applied_before_the_methods_that_train_on_it(tiny_recipe, catalogue):
    recipe = load_recipe(tiny_recipe(methods={"lora": {}, "int8": {}}), catalogue.infos)
    assert recipe.methods == ("int8", "lora")


def test_unsupported_quantisation_backend_gets_a_clear_message():
    from adapt import AdaptError
    from adapt_int8.backend import check_backend

    check_backend(4, torch.device("cpu"), torch.float32)  # this machine's bitsandbytes runs 4-bit on the CPU
    with pytest.raises(AdaptError, match=r"methods.int8.bits: 4-bit layers do not run on meta .* try bits = 8"):
        check_backend(4, torch.device("meta"), torch.float32)
