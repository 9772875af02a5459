"""Prompt/response pairs (or chat conversations) into token ids whose prompt part carries label -100,
so the loss and the metrics count only the response the model must learn to write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapt import DataError

IGNORED = -100


def special_ids(tokenizer) -> tuple[int | None, int]:
    """(beginning-of-text id or None, end-of-text id): the tokenizer's own, else BERT-style [CLS]/[SEP]."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise DataError("model.name: the tokenizer has no end-of-text token (eos or sep), so responses cannot end")
    return bos, eos


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    bos, _ = special_ids(tokenizer)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ([bos] if bos is not None else []) + ids


def _chat_ids(tokenizer, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def chat_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The conversation so far, rendered by the chat template, ending where the assistant's turn begins."""
    if tokenizer.chat_template is None:
        raise DataError("task.messages_column: the tokenizer has no chat template; use prompt and response columns")
    return _chat_ids(tokenizer, messages, add_generation_prompt=True)


def chat_example(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a conversation whose last message, the assistant's, is learnt."""
    if not messages or messages[-1].get("role") != "assistant":
        raise DataError("task.messages_column: each conversation must end with an assistant message to learn")
    prompt = chat_prompt_ids(tokenizer, messages[:-1])
    full = _chat_ids(tokenizer, messages)
    if full[: len(prompt)] != prompt:
        raise DataError(
            "task.messages_column: the chat template renders the conversation without its last message differently "
            "from the start of the whole conversation, so the prompt tokens cannot be masked"
        )
    return prompt, full[len(prompt) :]


def join(prompt: list[int], response: list[int], max_length: int) -> dict[str, list[int]]:
    """Input ids and labels; over `max_length`, the response is kept and the prompt loses its beginning."""
    response = response[: max_length - 1]
    if len(prompt) + len(response) > max_length:
        prompt = prompt[len(prompt) + len(response) - max_length :]
    ids = prompt + response
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORED] * len(prompt) + response}


def encode_batch(examples: dict[str, list], *, tokenizer, prompt, response, messages, max_length) -> dict[str, list]:
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    _, eos = special_ids(tokenizer)
    count = len(next(iter(examples.values())))
    for i in range(count):
        if messages:
            prompt_part, response_part = chat_example(tokenizer, examples[messages][i])
        else:
            prompt_part = prompt_ids(tokenizer, examples[prompt][i])
            response_part = tokenizer(examples[response][i], add_special_tokens=False)["input_ids"] + [eos]
        for key, value in join(prompt_part, response_part, max_length).items():
            out[key].append(value)
    return out


class CausalCollator:
    """Right-pads input ids (with the pad token), the attention mask (0) and labels (-100)."""

    def __init__(self, pad_id: int, on_labels: Callable[[Any], None] | None = None):
        self.pad_id = pad_id
        self.on_labels = on_labels  # given each batch's labels (`adapt plan` counts the labelled positions)

    def __call__(self, features: list[dict[str, Any]]):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            gap = width - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_id] * gap)
            batch["attention_mask"].append(list(f["attention_mask"]) + [0] * gap)
            batch["labels"].append(list(f.get("labels", f["input_ids"])) + [IGNORED] * gap)
        tensors = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
        if self.on_labels is not None:
            self.on_labels(tensors["labels"])
        return tensors
