"""top-layers: only the top blocks and what follows them train, the frozen prefix runs without dropout, and
its cached output gives the trained blocks exactly what they would have computed on."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")


def changed_names(model, before) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def test_only_the_top_blocks_and_the_head_train(train_tiny, restore_tiny, sample_batch, tmp_path):
    methods = {"top-layers": {"train_last": 1}}
    run, before, summary = train_tiny(methods=methods)
    model = run.unwrapped_model
    changed = changed_names(model, before)
    assert not [n for n in changed if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    assert any(n.startswith("bert.encoder.layer.1.") for n in changed)
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= changed
    assert not any(m.training for m in model.bert.encoder.layer[0].modules())  # no dropout below the boundary
    assert summary["top-layers"]["frozen_blocks"] == 1
    # two epochs of 192 rows and one evaluation of 64: only the second epoch is served
    assert summary["top-layers"]["cache"]["misses"] == 256 and summary["top-layers"]["cache"]["hits"] == 192
    assert not (tmp_path / "run" / "prefix-cache" / "top-layers-p0.bin").exists()  # deleted when the run ends
    restored = restore_tiny(tmp_path / "run", methods=methods)
    batch = sample_batch(run.tokenizer)
    with torch.inference_mode():
        assert torch.equal(restored.model.eval()(**batch).logits, model.eval()(**batch).logits)


def test_train_last_0_probes_the_last_block_s_output_served_from_the_cache(train_tiny):
    run, before, summary = train_tiny(methods={"top-layers": {"train_last": 0}})
    changed = changed_names(run.unwrapped_model, before)
    assert changed == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    assert summary["top-layers"]["frozen_blocks"] == 2
    assert summary["top-layers"]["cache"]["misses"] == 256 and summary["top-layers"]["cache"]["hits"] == 192


def test_a_float32_cache_trains_exactly_as_no_cache(train_tiny):
    _, _, cached = train_tiny(methods={"top-layers": {"train_last": 1, "cache_dtype": "float32"}})
    _, _, uncached = train_tiny(methods={"top-layers": {"train_last": 1, "cache": False}}, output={"overwrite": True})
    assert cached["top-layers"]["cache"]["hits"] > 0 and uncached["top-layers"]["cache"] is False
    assert cached["eval"] == uncached["eval"]


@pytest.mark.parametrize("first", [1, 2], ids=["below-the-top-block", "past-the-last-block"])
def test_served_states_give_the_outputs_of_running_the_prefix(tiny_bert_dir, tmp_path, first):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from adapt import PrefixCache

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).train()
    model.bert.embeddings.eval()  # the frozen prefix runs without dropout, as top-layers makes it
    for block in model.bert.encoder.layer[:first]:
        block.eval()
    texts = ["w1 good w2", "w3 w4 awful w5 w6 w7", "lovely", "w5 w6 w7 dull w8 w9 w10 w11"]

    def logits(batch, seed):
        torch.manual_seed(seed)  # the same dropout masks in the trained block
        with torch.no_grad():
            return model(**batch).logits

    tight = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    wide = dict(tokenizer(texts[::-1], padding="max_length", max_length=20, return_tensors="pt"))
    expected_tight, expected_wide = logits(tight, 1), logits(wide, 2)
    cache = PrefixCache(model.bert, model.bert.encoder.layer, first, tmp_path / "states.bin", 200, torch.float32)
    cache.install()
    assert torch.equal(logits(tight, 1), expected_tight)  # a miss: runs the prefix, stores its output
    assert (cache.misses, cache.hits) == (4, 0)
    assert torch.equal(logits(tight, 1), expected_tight)  # a hit: the frozen blocks are passed through
    # other order, other padding: the states served are the prefix's for the tight padding, which differ from a
    # prefix run at this padding only in last bits (attention over 20 keys sums in another order than over 10)
    torch.testing.assert_close(logits(wide, 2), expected_wide, rtol=1e-5, atol=1e-7)
    assert (cache.misses, cache.hits) == (4, 8)
    assert cache.stats()["examples"] == 4
    cache.uninstall(delete=True)
    assert not (tmp_path / "states.bin").exists()
    assert torch.equal(logits(tight, 1), expected_tight)


def test_past_a_trimmed_top_block_only_the_first_token_s_row_is_stored(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from adapt import PrefixCache, on_last_block_output
    from adapt.speed.trim import trim_top_block

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).eval()
    assert trim_top_block(model)
    texts = ["w1 good w2", "w3 w4 awful w5 w6 w7", "lovely", "w5 w6 w7 dull w8 w9 w10 w11"]
    tight = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    wide = dict(tokenizer(texts[::-1], padding="max_length", max_length=20, return_tensors="pt"))
    with torch.no_grad():
        expected_tight, expected_wide = model(**tight).logits, model(**wide).logits
        blocks = model.bert.encoder.layer
        cache = PrefixCache(model.bert, blocks, len(blocks), tmp_path / "states.bin", 4, torch.float32)
        cache.install()
        assert cache.first_row and torch.equal(model(**tight).logits, expected_tight)  # a miss, stored
        assert cache.store.used == 4  # one row per example (the tokens' rows would not fit in 4)
        assert torch.equal(model(**tight).logits, expected_tight)  # a hit
        torch.testing.assert_close(model(**wide).logits, expected_wide, rtol=1e-5, atol=1e-7)
        assert (cache.misses, cache.hits) == (4, 8)
        # a hook reading the top block's every row gets them: the block runs whole, the cache stays out of the way
        seen = []
        handle = on_last_block_output(model, lambda block, hidden: seen.append(hidden.shape[1]))
        torch.testing.assert_close(model(**tight).logits, expected_tight)
        assert seen == [tight["input_ids"].shape[1]] and (cache.misses, cache.hits) == (4, 8)
        handle.remove()
    cache.uninstall(delete=True)
    assert model.bert.encoder.layer[-1].forward.__class__.__name__ == "FirstTokenForward"


def test_a_checkpoint_of_the_other_row_layout_is_stored_afresh(tiny_bert_dir, tmp_path):
    """A resumed run serves a checkpoint's states only if they were stored in its own layout: one written before
    first-row storing (its state names no layout: every token's rows) is stored afresh, not served as first rows."""
    from types import SimpleNamespace

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from adapt import PrefixCache
    from adapt.speed.trim import trim_top_block

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).eval()
    trim_top_block(model)
    batch = dict(tokenizer(["w1 good w2", "w3 w4 awful w5 w6 w7", "lovely"], padding=True, return_tensors="pt"))
    blocks = model.bert.encoder.layer
    run = SimpleNamespace(
        checkpoints_dir=tmp_path / "checkpoints", accelerator=SimpleNamespace(process_index=0), step=5
    )
    (run.checkpoints_dir / "head-only").mkdir(parents=True)

    def cache():
        made = PrefixCache(model.bert, blocks, len(blocks), tmp_path / "states.bin", 8, torch.float32)
        made.install()
        return made

    with torch.no_grad():
        expected = model(**batch).logits
        interrupted = cache()
        model(**batch)
        state = interrupted.checkpoint(run, "head-only")
        interrupted.uninstall(delete=False)  # kept for the resumed run, as a stop does
        older = {key: value for key, value in state.items() if key != "first_row"}
        for resumed_from, served in ((state, True), (older, False)):
            resumed = cache()
            resumed.resume(run, "head-only", resumed_from)
            assert (resumed.store is not None) is served
            torch.testing.assert_close(model(**batch).logits, expected)
            assert (resumed.hits, resumed.misses) == ((3, 3) if served else (0, 3))  # served: the stats resume too
            resumed.uninstall(delete=False)


def test_composed_with_lora_the_lower_adapters_stay_frozen(train_tiny):
    lora = {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}
    run, before, summary = train_tiny(methods={"lora": lora, "top-layers": {"train_last": 1}})
    changed = changed_names(run.unwrapped_model, before)
    assert any("layer.1." in n and "lora_" in n for n in changed)
    assert not any("layer.0." in n for n in changed)
    assert not any("lora_" not in n and "layer." in n for n in changed)  # the top block's base weights stay
    assert summary["top-layers"]["cache"]["hits"] > 0


def test_train_last_beyond_the_model_is_refused(tiny_recipe, adapt_cli):
    result = adapt_cli("run", str(tiny_recipe(methods={"top-layers": {"train_last": 3}})))
    assert result.returncode != 0
    assert "methods.top-layers.train_last: 3" in result.stderr and "has 2 blocks" in result.stderr


def test_a_killed_run_resumes_with_the_same_cached_states(tiny_recipe, tmp_path, adapt_with_crash):
    from adapt.commands.cli import main

    recipe = str(tiny_recipe(methods={"top-layers": {"train_last": 1}}, train={"epochs": 3, "checkpoint_every": 3}))
    assert main(["run", recipe, "--set", f"output.dir={json.dumps(str(tmp_path / 'reference'))}"]) == 0
    killed = adapt_with_crash("run", recipe, "--set", "plugins.crash.step=17")  # in epoch 2: states served
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "run" / "prefix-cache" / "top-layers-p0.bin").is_file()
    resumed = adapt_with_crash("run", recipe, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "reference", tmp_path / "run"))
    assert a["eval"] == b["eval"]
    assert a["top-layers"]["cache"]["examples"] == b["top-layers"]["cache"]["examples"]


def test_a_prefix_not_pinned_in_evaluation_mode_is_not_cached(tiny_bert_dir):
    """A method of someone else's that froze the prefix but forgot keep_in_eval is told, before anything is
    stored: its dropout would be cached and replayed."""
    from types import SimpleNamespace

    from transformers import AutoModelForSequenceClassification

    from adapt import AdaptError, keep_in_eval, serve_frozen_prefix

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).requires_grad_(False)
    run = SimpleNamespace(unwrapped_model=model, compiled=None)
    with pytest.raises(AdaptError, match=r"^my-method: .*bert\.embeddings, bert\.encoder\.layer\.0 are not"):
        serve_frozen_prefix(run, first=1, dtype="float32", owner="my-method")
    keep_in_eval(model.bert.embeddings)
    with pytest.raises(AdaptError, match=r"and bert\.encoder\.layer\.0 is not"):
        serve_frozen_prefix(run, first=1, dtype="float32", owner="my-method")
