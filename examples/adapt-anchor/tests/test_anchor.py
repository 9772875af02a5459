"""The installed method, named in recipes, on adapt.testing's tiny model and toy data."""

from __future__ import annotations

import pytest

FULL = {"learning_rate": 3e-3, "epochs": 2}


@pytest.fixture
def train(run_recipe, tiny_recipe, tiny_bert_dir):
    """Full fine-tuning of the tiny BERT, with or without the anchor; returns the run and its distance moved."""
    from transformers import AutoModel

    loaded = dict(AutoModel.from_pretrained(tiny_bert_dir).named_parameters())

    def run(methods: dict, name: str):
        trained = run_recipe(tiny_recipe(name, methods=methods, train=FULL, output={"overwrite": True}))
        pretrained = trained.run.pretrained_parameters()
        distance = sum((pretrained[f"bert.{n}"].detach() - p).abs().sum().item() for n, p in loaded.items())
        return trained, distance / sum(p.numel() for p in loaded.values())

    return run


def test_the_anchor_holds_the_pretrained_weights_back_and_is_logged(train):
    free, free_distance = train({"full": {}}, "full.toml")
    held, held_distance = train({"full": {}, "anchor": {"weight": 1.0}}, "anchored.toml")
    assert held_distance < 0.5 * free_distance
    logs = held.train_logs()
    assert all(r["total_loss"] == pytest.approx(r["loss"] + r["anchor"]) for r in logs)
    assert "anchor" not in free.train_logs()[0]


def test_the_anchor_refuses_a_run_in_which_no_pretrained_weight_trains(run_recipe, tiny_recipe):
    from adapt import AdaptError

    with pytest.raises(AdaptError, match="methods.anchor: no pretrained weight trains with methods lora"):
        run_recipe(tiny_recipe(methods={"lora": {}, "anchor": {}}))
