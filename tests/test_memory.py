"""Saving memory: activation checkpointing computes the same gradients, for every method that trains."""

from __future__ import annotations

import pytest

LORA = {"lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "dropout": 0.1}}
METHODS = {
    "lora": LORA,
    "adapters": {"adapters": {"reduction_factor": 4}},
    "full": {"full": {}},
    "int8-lora": {"int8": {}, **LORA},
}


@pytest.mark.parametrize("method", METHODS)
def test_gradient_checkpointing_gives_the_same_gradients(method, same_gradients_with_checkpointing):
    same_gradients_with_checkpointing(methods=METHODS[method])


def test_gradient_checkpointing_with_token_classification(same_gradients_with_checkpointing, toy_ner):
    same_gradients_with_checkpointing(
        methods=LORA,
        data={"train_file": str(toy_ner["train"]), "eval_file": str(toy_ner["eval"])},
        task={"head": "token-classification", "tokens_column": "tokens", "tags_column": "ner_tags"},
    )
