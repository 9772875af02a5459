"""Small pieces: length-grouped batches, classification metrics, atomic writes, head module discovery."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from adapt import atomic_dir, atomic_write_text, head_module_names
from adapt.train.batching import LengthGroupedBatches, padding_efficiency, shard_batches, sorted_batches
from adapt_sequence_classification.metrics import ClassificationMetrics


def lengths(n=2000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(3, 60) for _ in range(n)]


def test_length_grouping_covers_every_example_once_and_cuts_padding():
    lens = lengths()
    grouped = LengthGroupedBatches(lens, 32, seed=1, pool=16)
    plain = LengthGroupedBatches(lens, 32, seed=1, group_by_length=False)
    for sampler in (grouped, plain):
        batches = sampler.batches()
        assert sorted(i for b in batches for i in b) == list(range(len(lens)))
        assert len(batches) == len(sampler) == 63
    assert padding_efficiency(lens, grouped.batches()) > 0.9
    assert padding_efficiency(lens, plain.batches()) < 0.6


def test_the_longest_example_is_in_the_first_batch_of_every_epoch():
    """A batch too big for memory fails at the first step, and the run's memory peak is reached there."""
    lens = lengths()
    for grouped in (True, False):
        sampler = LengthGroupedBatches(lens, 32, seed=3, group_by_length=grouped)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            batches = sampler.batches()
            assert max(lens[i] for i in batches[0]) == max(lens)
            assert sorted(i for b in batches for i in b) == list(range(len(lens)))


def test_length_grouping_is_seeded_and_changes_per_epoch():
    lens = lengths()
    a, b = LengthGroupedBatches(lens, 32, seed=1), LengthGroupedBatches(lens, 32, seed=1)
    assert a.batches() == b.batches()
    first = a.batches()
    a.set_epoch(1)
    assert a.batches() != first
    # batches are shuffled: the first batches are not simply the longest ones
    assert Counter(max(lens[i] for i in batch) for batch in first[:5]) != Counter([60] * 5)


def test_eval_shards_count_every_batch_once_and_keep_processes_in_step():
    batches = [[0], [1], [2], [3], [4]]
    shards = [shard_batches(batches, rank, 2) for rank in range(2)]
    assert shards[0] == ([[0], [2], [4]], [True, True, True])
    assert shards[1] == ([[1], [3], [1]], [True, True, False])
    counted = [b for shard, flags in shards for b, f in zip(shard, flags, strict=True) if f]
    assert sorted(counted) == batches
    assert shard_batches([[0]], 1, 2) == ([[0]], [False])
    assert shard_batches([], 0, 2) == ([], [])


def test_sorted_eval_batches_put_the_longest_first():
    lens = [5, 50, 7, 30]
    assert sorted_batches(lens, 2) == [[1, 3], [2, 0]]


def metrics_from(labels, preds, num_labels):
    """Fed in two halves to two accumulators and merged, as two processes would."""
    logits = torch.nn.functional.one_hot(torch.tensor(preds), num_labels).float()
    labels = torch.tensor(labels)
    first, second = ClassificationMetrics(num_labels), ClassificationMetrics(num_labels)
    first.update(SimpleNamespace(logits=logits[:2]), {"labels": labels[:2]})
    second.update(SimpleNamespace(logits=logits[2:]), {"labels": labels[2:]})
    first.merge(second)
    return first.compute()


def test_classification_metrics_by_hand():
    # labels 0 0 1 1 2, predictions 0 1 1 1 0:
    # class 0: tp 1, fp 1, fn 1 -> F1 0.5; class 1: tp 2, fp 1, fn 0 -> F1 0.8; class 2: tp 0 -> F1 0
    result = metrics_from([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_ignores_classes_absent_from_labels_and_predictions():
    result = metrics_from([0, 1, 1], [0, 1, 0], 4)
    # class 0: tp 1, fp 1, fn 0 -> 2/3; class 1: tp 1, fp 0, fn 1 -> 2/3; classes 2, 3 unseen
    assert result["macro_f1"] == pytest.approx(2 / 3)


def test_metrics_loss_is_the_mean_cross_entropy():
    metrics = ClassificationMetrics(2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    metrics.update(SimpleNamespace(logits=logits), {"labels": labels})
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert metrics.compute()["loss"] == pytest.approx(expected)


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("crash while saving")
    assert (target / "weights").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary leftovers


def test_atomic_write_text(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "summary.json", "{}")
    assert path.read_text() == "{}"
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_head_modules_are_found_generically():
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
    )

    bert = BertForSequenceClassification(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    )
    gpt2 = GPT2ForSequenceClassification(
        GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, bos_token_id=0, eos_token_id=0)
    )
    assert head_module_names(bert) == ["classifier"]
    assert head_module_names(gpt2) == ["score"]


def test_local_files_of_each_type_load_as_train_and_eval(tmp_path):
    import json

    from adapt.loading.splits import load_splits
    from adapt.recipe.sections import DataSection

    rows = [{"text": "null", "label": 0}, {"text": 'say "hi"', "label": 1}, {"text": "NA", "label": 1}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.csv").write_text('text,label\nnull,0\n"say ""hi""",1\nNA,1\n')
    (tmp_path / "a.tsv").write_text('text\tlabel\nnull\t0\nsay "hi"\t1\nNA\t1\n')
    for suffix in ("jsonl", "csv", "tsv"):
        section = DataSection(
            train_file=str(tmp_path / f"a.{suffix}"), eval_file=str(tmp_path / f"a.{suffix}"), max_train_samples=2
        )
        splits = load_splits(section, seed=0)
        assert len(splits["train"]) == 2 and len(splits["eval"]) == 3, suffix
        # "null" and "NA" stay text, quotes survive
        assert splits["eval"]["text"] == ["null", 'say "hi"', "NA"], suffix
