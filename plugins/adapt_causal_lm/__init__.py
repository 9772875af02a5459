"""Causal language-model head for instruction tuning (SFT): learn to write the response to a prompt.

Examples are prompt and response columns, or a column of chat messages rendered by the tokenizer's
chat template. Only response tokens carry labels (prompt tokens are -100), so the loss, perplexity and
token accuracy are the response's. `adapt predict` generates greedily from each prompt.

The model is the checkpoint's own LM (`AutoModelForCausalLM`); an encoder checkpoint (BERT) is loaded as
a decoder, and the modules it lacks start random and train fully, as a classification head would.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from adapt import (
    PluginInfo,
    Run,
    Table,
    encode_splits,
    fresh_modules,
    from_pretrained_cached,
    hookimpl,
    model_config,
    require_columns,
    row_values,
)
from adapt_causal_lm import labelled_logits
from adapt_causal_lm.encode import CausalCollator, chat_prompt_ids, encode_batch, prompt_ids, special_ids
from adapt_causal_lm.generate import generate
from adapt_causal_lm.metrics import PerplexityMetrics

NAME = "causal-lm"


class CausalLMTable(Table):
    prompt_column: str = "prompt"
    """The column of prompts (with response_column; the prompt's tokens carry no loss)."""
    response_column: str = "response"
    """The column of responses: the tokens the model learns to produce."""
    messages_column: str | None = None
    """Instead of prompt and response: a column of conversations ([{"role": ..., "content": ...}, ...]) rendered by
    the tokenizer's chat template; the last (assistant) message is learnt."""
    max_new_tokens: int = Field(default=64, ge=1)
    """`adapt predict`: greedy generation stops at the end-of-text token or after this many tokens."""
    logits_for_labels_only: bool = True
    """The LM head computes logits only at positions whose next token is labelled (the response's), not at every
    prompt and padding position: the same loss and gradients, without a batch x length x vocabulary tensor of
    logits (and its float32 copy) each step. `outputs.logits` of a call with labels is then (labelled tokens,
    vocabulary)."""

    @model_validator(mode="after")
    def _one_format(self) -> CausalLMTable:
        if self.messages_column and {"prompt_column", "response_column"} & self.model_fields_set:
            raise ValueError("set 'messages_column' or 'prompt_column'/'response_column', not both")
        return self


def prepare_tokenizer(tokenizer) -> None:
    """Padding needs a pad token; decoder tokenizers (GPT-2) often have none, and end-of-text serves."""
    if tokenizer is not None and tokenizer.pad_token_id is None:  # None: planning without the tokenizer
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token


def no_cache_with_labels(module, args, kwargs):
    """A call with labels (training, evaluation) builds no KV cache: it would hold every layer's keys and values
    until the backward pass, for nothing. Generation, which passes no labels, keeps its cache."""
    if kwargs.get("labels") is None:
        return None
    return args, {**kwargs, "use_cache": False}


class CausalLM:
    labelled: labelled_logits.LabelledLogits | None = None  # the loaded model's hooks (task.logits_for_labels_only)

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(kind="head", table=CausalLMTable, summary="prompt -> response (SFT); perplexity, generation")

    @hookimpl
    def adapt_head_modules(self) -> list[str]:
        return []  # the LM head is pretrained; fresh modules of an encoder checkpoint are found on loading

    @hookimpl
    def adapt_load_model(self, run: Run, load_kwargs: dict[str, Any]):
        from transformers import AutoModelForCausalLM

        prepare_tokenizer(run.tokenizer)  # before anything pads (predicting encodes after loading)
        config = model_config(run)
        if getattr(config, "is_decoder", None) is False:
            config.is_decoder = True  # an encoder architecture (BERT) then attends causally
        model, info = from_pretrained_cached(
            AutoModelForCausalLM.from_pretrained,
            run.recipe.model.name,
            key="model.name",
            config=config,
            output_loading_info=True,
            **load_kwargs,
        )
        if model.config.pad_token_id is None and run.tokenizer is not None:
            model.config.pad_token_id = run.tokenizer.pad_token_id
        run.head_modules = fresh_modules(model, info.get("missing_keys", ()))
        run.task_type = "CAUSAL_LM"
        model.register_forward_pre_hook(no_cache_with_labels, with_kwargs=True)  # before labelled_logits' hook
        self.labelled = labelled_logits.install(model) if run.table(CausalLMTable).logits_for_labels_only else None
        return model

    @hookimpl
    def adapt_encode(self, run: Run, dataset) -> Any:
        table = run.table(CausalLMTable)
        prepare_tokenizer(run.tokenizer)
        if table.messages_column:
            require_columns(dataset, {"messages_column": table.messages_column})
        else:
            require_columns(dataset, {"prompt_column": table.prompt_column, "response_column": table.response_column})
        return encode_splits(
            dataset,
            encode_batch,
            tokenizer=run.tokenizer,
            prompt=table.prompt_column,
            response=table.response_column,
            messages=table.messages_column,
            max_length=run.recipe.data.max_length,
        )

    @hookimpl
    def adapt_make_collator(self, run: Run) -> CausalCollator:
        planning = self.labelled is not None and run.planning  # the plan's batch goes to the meta device
        return CausalCollator(run.tokenizer.pad_token_id, self.labelled.count_labelled if planning else None)

    @hookimpl
    def adapt_make_metrics(self) -> PerplexityMetrics:
        return PerplexityMetrics()

    @hookimpl
    def adapt_predict(self, run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Greedy generation from each row's prompt (or conversation so far)."""
        table = run.table(CausalLMTable)
        prepare_tokenizer(run.tokenizer)
        if table.messages_column:
            # a conversation ending with the assistant's answer (an eval file) is asked without that answer
            conversations = [
                c[:-1] if c and c[-1].get("role") == "assistant" else c
                for c in row_values(rows, table.messages_column, "task.messages_column")
            ]
            prompts = [chat_prompt_ids(run.tokenizer, c) for c in conversations]
            shown = [c[-1]["content"] if c else "" for c in conversations]
        else:
            shown = row_values(rows, table.prompt_column, "task.prompt_column")
            prompts = [prompt_ids(run.tokenizer, p) for p in shown]
        _, eos = special_ids(run.tokenizer)
        texts = generate(run, prompts, eos, table.max_new_tokens)
        return [{"prompt": p, "generated": t} for p, t in zip(shown, texts, strict=True)]
