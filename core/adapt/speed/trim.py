"""The top transformer block computes only the row the classifier reads.

A BERT-style sequence classifier reads one hidden state of the last block: the first token's (BERT's pooler,
RoBERTa's, XLM-R's, CamemBERT's and ELECTRA's classification heads). The other rows of that block's query, attention
output, feed-forward layers and their backward passes are computed and thrown away: about 5/6 of the top block, a
sixth of a 6-block model's step. Trimmed, the block computes keys and values for every token (the first token attends
to all of them) and everything else for the first token only; the classifier's input is the same up to rounding
(tested), and so is every gradient. Where the key and value projections are plain `nn.Linear` layers, even those
per-token projections go: their weights are applied to the one query instead (`_absorbed_attention`).

The block's own submodules do the work (so LoRA layers, adapters' hooks and int8 linears apply as before); only
the attention's wiring is repeated here. Where something observes the top block's full output (a forward hook on
it: `adapt.on_last_block_output`, the frozen-prefix cache ending there) or the call is not the plain encoder call
(cross-attention, a KV cache, an attention implementation other than sdpa or eager), the block computes every row.
"""

from __future__ import annotations

import sys
from typing import Any

#: Sequence classifiers whose head reads the first token only, and whose blocks are BERT's (`attention.self`'s
#: query/key/value, `attention.output`, `feed_forward_chunk`).
FIRST_TOKEN_CLASSIFIERS = frozenset(
    {
        "BertForSequenceClassification",
        "RobertaForSequenceClassification",
        "XLMRobertaForSequenceClassification",
        "CamembertForSequenceClassification",
        "ElectraForSequenceClassification",
    }
)
ATTENTION = ("sdpa", "eager")
#: Arguments of a call that is not the plain encoder call (cross-attention, a KV cache): the block runs whole.
NOT_ENCODER = ("encoder_hidden_states", "encoder_attention_mask", "cache", "past_key_values")


def trim_top_block(model: Any) -> bool:
    """Make the top block of `model` (a freshly loaded transformers model, before any method wraps it) compute only
    the first token's row. Returns whether it did: False where the model is not one of FIRST_TOKEN_CLASSIFIERS or
    its top block is not a plain BERT encoder block. A head calls it when its task reads only the first token
    (`Head.reads_first_token`, with the `trim_top_block` key of its `FirstTokenInputs` table): the model class says
    whether the architecture allows it, the head whether the task does."""
    if type(model).__name__ not in FIRST_TOKEN_CLASSIFIERS:
        return False
    from adapt.model.modeling import find_blocks

    try:
        block = find_blocks(model)[1][-1]
    except ValueError:
        return False
    if not _plain_encoder_block(block):
        return False
    block.forward = FirstTokenForward(block)
    return True


def is_trimmed(model: Any) -> bool:
    """Whether `trim_top_block` trimmed a block of `model` (wrapped by PEFT or not)."""
    return any(is_trimmed_block(m) for m in model.modules())


def is_trimmed_block(block: Any) -> bool:
    """Whether `trim_top_block` trimmed this block."""
    return isinstance(block.__dict__.get("forward"), FirstTokenForward)


def reads_first_row_only(hook: Any) -> Any:
    """Mark a forward hook that reads at most the first token's row of the block's output (the frozen-prefix
    cache's, the memory planner's), so that a trimmed block stays trimmed under it."""
    hook.adapt_reads_first_row_only = True
    return hook


def observed(block: Any) -> bool:
    """Whether a forward hook on `block` reads more of its output than the first token's row."""
    return any(not getattr(hook, "adapt_reads_first_row_only", False) for hook in block._forward_hooks.values())


def _plain_encoder_block(block: Any) -> bool:
    attention = getattr(getattr(block, "attention", None), "self", None)
    needed = ("query", "key", "value", "attention_head_size", "scaling", "config", "dropout")
    return (
        attention is not None
        and all(hasattr(attention, name) for name in needed)
        and hasattr(block.attention, "output")
        and callable(getattr(block, "feed_forward_chunk", None))
        and not getattr(block, "is_decoder", True)
        and not getattr(block, "add_cross_attention", True)
        and getattr(block, "chunk_size_feed_forward", 1) == 0
        and hasattr(sys.modules.get(type(attention).__module__), "eager_attention_forward")
    )


class FirstTokenForward:
    """Installed as the block's `forward`: the first token's row of what the block's class forward returns."""

    def __init__(self, block: Any):
        self.block = block
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.functions = ALL_ATTENTION_FUNCTIONS
        self.eager_attention = sys.modules[type(block.attention.self).__module__].eager_attention_forward

    def __call__(self, hidden_states: Any, attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        block = self.block
        attention = block.attention.self
        implementation = attention.config._attn_implementation
        other = any(a is not None for a in args) or any(kwargs.get(name) is not None for name in NOT_ENCODER)
        if observed(block) or other or implementation not in ATTENTION:
            return type(block).forward(block, hidden_states, attention_mask, *args, **kwargs)
        for name in NOT_ENCODER:
            kwargs.pop(name, None)
        batch, length = hidden_states.shape[:2]
        size = attention.attention_head_size
        first = hidden_states[:, :1]
        query = attention.query(first).view(batch, 1, -1, size).transpose(1, 2)
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = attention_mask[:, :, :1]  # the first query's row of a per-query mask
        if _absorbable(attention, attention_mask):
            context = _absorbed_attention(attention, query, hidden_states, attention_mask)
        else:
            key = attention.key(hidden_states).view(batch, length, -1, size).transpose(1, 2)
            value = attention.value(hidden_states).view(batch, length, -1, size).transpose(1, 2)
            function = self.functions.get_interface(implementation, self.eager_attention)
            context, _ = function(
                attention,
                query,
                key,
                value,
                attention_mask,
                dropout=attention.dropout.p if attention.training else 0.0,
                scaling=attention.scaling,
                **kwargs,
            )
        attended = block.attention.output(context.reshape(batch, 1, -1), first)
        return block.feed_forward_chunk(attended)


def _absorbable(attention: Any, mask: Any) -> bool:
    """Whether keys and values are plain linear maps whose weights can be applied to the one query instead of to
    every token: `nn.Linear` itself (not LoRA's, int8's or a parametrized subclass), with nothing hooked on it."""
    import torch

    def plain(linear: Any) -> bool:
        return (
            type(linear) is torch.nn.Linear
            and not linear._forward_hooks
            and not linear._forward_pre_hooks
            and "forward" not in vars(linear)
        )

    return plain(attention.key) and plain(attention.value) and (mask is None or mask.dim() == 4)


def _absorbed_attention(attention: Any, query: Any, states: Any, mask: Any) -> Any:
    """The first token's attention, with the key and value projections moved onto the query's side.

    Per head h, q·(W_h x_j + b_h) = (W_hᵀ q)·x_j + q·b_h, whose last term is the same for every key j (softmax drops
    it; it is kept for the bias's zero gradient), and Σ_j a_j (V_h x_j + c_h) = V_h (Σ_j a_j x_j) + (Σ_j a_j) c_h,
    where Σ_j a_j is 1 but for attention dropout. One query then costs a few vectors per head instead of a key and a
    value for every token: the top block's per-token matmuls go, forward and backward. Equal to projecting every
    token up to rounding (tested).
    """
    import torch
    from torch.nn import functional

    heads, size = query.shape[1], query.shape[-1]
    first = query[:, :, 0].transpose(0, 1)  # (heads, batch, size)
    key = attention.key.weight.view(heads, size, -1)
    value = attention.value.weight.view(heads, size, -1)
    # torch.matmul, which autocast casts (einsum it does not), on 3-d operands that broadcast nothing
    pulled = torch.matmul(first, key).transpose(0, 1)  # W_hᵀ q: (batch, heads, hidden)
    scores = torch.matmul(pulled, states.transpose(1, 2))  # (batch, heads, length)
    if attention.key.bias is not None:  # softmax drops it, but the bias keeps its (zero) gradient, as unabsorbed
        scores = scores + (first * attention.key.bias.view(heads, 1, size)).sum(-1).transpose(0, 1)[..., None]
    scores = scores * attention.scaling
    if mask is not None:
        mask = mask[:, :, 0]  # (batch, 1 or heads, length)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    weights = functional.softmax(scores, dim=-1)
    weights = functional.dropout(weights, p=attention.dropout.p, training=attention.training)
    mixed = torch.matmul(weights, states)  # Σ_j a_j x_j: (batch, heads, hidden)
    context = torch.matmul(mixed.transpose(0, 1), value.transpose(1, 2)).transpose(0, 1)  # (batch, heads, size)
    if attention.value.bias is not None:
        context = context + weights.sum(-1, keepdim=True) * attention.value.bias.view(heads, size)
    return context.reshape(query.shape[0], 1, heads * size)
