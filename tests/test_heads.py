"""Task heads on the tiny model: label alignment, metrics by hand, and an end-to-end run that learns."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from adapt_token_classification.align import encode_words
from adapt_token_classification.metrics import EntityMetrics


def test_only_the_first_sub_token_of_a_word_carries_its_tag():
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "cat"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    examples = {"tokens": [["unaffable", "cat"]], "ner_tags": [["B-PER", "O"]]}
    features = encode_words(
        examples, tokenizer=tokenizer, words="tokens", tags="ner_tags", mapping={"B-PER": 0, "O": 1}, max_length=16
    )
    assert tokenizer.convert_ids_to_tokens(features["input_ids"][0]) == [
        "[CLS]", "un", "##aff", "##able", "cat", "[SEP]"
    ]  # fmt: skip
    assert features["labels"][0] == [-100, 0, -100, -100, 1, -100]


def test_entity_metrics_by_hand_across_two_processes():
    tags = ["O", "B-PER", "I-PER", "B-LOC"]
    # true: B-PER I-PER O B-LOC; predicted: B-PER I-PER O O -> 1 of 2 entities found, no false ones
    true = torch.tensor([[-100, 1, 2, 0, 3, -100]])
    pred = torch.tensor([[0, 1, 2, 0, 0, 0]])
    logits = torch.nn.functional.one_hot(pred, len(tags)).float()
    first, second = EntityMetrics(tags), EntityMetrics(tags)
    first.update(SimpleNamespace(logits=logits), {"labels": true})
    nothing = torch.nn.functional.one_hot(torch.zeros_like(pred), len(tags)).float()  # all "O"
    second.update(SimpleNamespace(logits=nothing), {"labels": torch.tensor([[-100, 3, -100, -100, -100, -100]])})
    first.merge(second)
    # merged: sentence 2 is a LOC predicted O -> entities true 3, predicted 1, correct 1
    result = first.compute()
    assert result["precision"] == pytest.approx(1.0)
    assert result["recall"] == pytest.approx(1 / 3)
    assert result["f1"] == pytest.approx(0.5)
    assert result["token_accuracy"] == pytest.approx(3 / 5)


def test_token_classification_learns_and_restores(tiny_recipe, toy_ner, train_tiny, restore_tiny, tmp_path):
    changes = {
        "data": {"train_file": str(toy_ner["train"]), "eval_file": str(toy_ner["eval"])},
        "task": {"head": "token-classification", "tokens_column": "tokens", "tags_column": "ner_tags"},
        "train": {"epochs": 3, "learning_rate": 3e-3},
    }
    run, before, summary = train_tiny(methods={"full": {}}, **changes)
    assert set(summary["eval"]) == {"f1", "precision", "recall", "token_accuracy", "loss"}
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if r["kind"] == "train"]
    assert losses[-1] < 0.5 * losses[0]  # tags follow the words: easy to learn
    assert summary["eval"]["f1"] > 0.5
    assert run.unwrapped_model.config.id2label == {0: "B-NEG", 1: "B-POS", 2: "O"}
    batch = dict(run.tokenizer([["w1", "good", "w2"]], is_split_into_words=True, return_tensors="pt"))
    restored = restore_tiny(tmp_path / "run", methods={"full": {}}, **changes)
    with torch.inference_mode():
        assert torch.equal(restored.model.eval()(**batch).logits, run.unwrapped_model.eval()(**batch).logits)


def test_token_classification_names_missing_columns(tiny_recipe, toy_ner, adapt_cli):
    recipe = tiny_recipe(
        data={"train_file": str(toy_ner["train"]), "eval_file": str(toy_ner["eval"])},
        task={"head": "token-classification", "tokens_column": "words", "tags_column": "ner_tags"},
    )
    result = adapt_cli("check", str(recipe))
    assert result.returncode == 2
    assert "task.tokens_column: the train split has no column 'words'; its columns are: tokens, ner_tags" in " ".join(
        result.stderr.split()
    )


def test_label_names_and_class_weights_from_the_recipe(train_tiny, tmp_path):
    task = {"label_names": ["negative", "positive"], "class_weights": [1.0, 3.0]}
    run, _, summary = train_tiny(task=task, train={"epochs": 1})
    assert run.unwrapped_model.config.id2label == {0: "negative", 1: "positive"}
    saved = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert saved == {"labels": ["negative", "positive"], "class_weights": [1.0, 3.0]}


def test_class_weighted_loss_and_balanced_weights():
    from datasets import Dataset

    from adapt_sequence_classification import SequenceClassification
    from adapt_sequence_classification.labels import class_weights

    train = Dataset.from_dict({"labels": [0, 0, 0, 1]})
    assert class_weights(train, ["a", "b"], "balanced") == [4 / (2 * 3), 4 / (2 * 1)]
    head = SequenceClassification()
    head.weights = [1.0, 3.0]
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    loss = head.adapt_compute_loss(batch={"labels": labels}, outputs=SimpleNamespace(logits=logits))
    per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert loss.item() == pytest.approx(((per_example * torch.tensor([1.0, 1.0, 3.0])).sum() / 5).item())


@pytest.mark.parametrize(
    "task, message",
    [
        ({"label_names": ["a", "b", "c"]}, "task.label_names: 3 names given, but column 'label' holds ids 0..1"),
        ({"class_weights": [1.0]}, "task.class_weights: 1 weights given for 2 classes (0, 1)"),
    ],
)
def test_label_options_that_do_not_fit_the_data_are_named(tiny_recipe, adapt_cli, task, message):
    result = adapt_cli("run", str(tiny_recipe(task=task)))
    assert result.returncode == 2  # bad input: the data and the recipe disagree
    assert message in " ".join(result.stderr.split()), result.stderr[-1500:]
