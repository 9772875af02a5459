"""A checkpoint's own masked-language-model head, for plugins that measure or keep what pretraining taught
(the forgetting measurement, an auxiliary MLM loss): the head reads the last transformer block's outputs of
whatever the run has made of the encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapt.loading.hub import from_pretrained_cached

if TYPE_CHECKING:
    import torch


def has_mlm_head(config: Any) -> bool:
    """Whether the checkpoint was saved with its masked-LM head (BERT-like models trained by MLM)."""
    return any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in getattr(config, "architectures", None) or [])


def pretrained_mlm_head(run: Any) -> torch.nn.Module | None:
    """The frozen masked-LM head of `run`'s checkpoint (BERT's `cls`, RoBERTa's `lm_head`, with its decoder
    tied to the pretrained word embeddings) on the run's device, or None when the checkpoint has none. The
    rest of the masked-LM model is dropped once the head is taken."""
    if run.planning:
        return None
    from transformers import AutoConfig, AutoModelForMaskedLM

    cfg = run.recipe.model
    options = {"key": "model.name", "revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    # The checkpoint's config, not the run model's: saving a run rewrites that one's `architectures`.
    if not has_mlm_head(from_pretrained_cached(AutoConfig.from_pretrained, cfg.name, **options)):
        return None
    model = from_pretrained_cached(AutoModelForMaskedLM.from_pretrained, cfg.name, **options)
    heads = [m for name, m in model.named_children() if name != model.base_model_prefix]
    if len(heads) != 1:
        return None
    return heads[0].to(run.accelerator.device).eval().requires_grad_(False)


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokenizer: Any,
    generator: torch.Generator,
    rate: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked inputs, labels): `rate` of the real, non-special tokens replaced by the mask token (at least one
    per row), labels -100 elsewhere. Draws only from `generator`, so training's random stream is untouched."""
    import torch

    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for token in tokenizer.all_special_ids:
        special |= input_ids == token
    candidates = attention_mask.bool() & ~special
    scores = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
    chosen = candidates & (scores < rate)
    first = torch.where(candidates, scores, torch.full_like(scores, 2.0)).argmin(dim=1)  # a row gets one at least
    chosen[torch.arange(len(input_ids)), first] |= candidates.any(dim=1)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    return input_ids.masked_fill(chosen, tokenizer.mask_token_id), labels


def mlm_loss(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the head's predictions at the masked positions."""
    import torch

    logits = head(hidden.to(next(head.parameters()).dtype))
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
