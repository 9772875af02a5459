"""Building the optimizer `train.optimizer` names (the core's fallback for `adapt_make_optimizer`); the options
of each optimizer are declared in adapt.recipe.optimizers, where the recipe validates them."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from adapt.errors import AdaptError
from adapt.recipe.optimizers import OPTIONS, AdamW8bitOptions

if TYPE_CHECKING:
    import torch

    from adapt.recipe.sections import TrainSection


def build_optimizer(
    cfg: TrainSection, device: torch.device, param_groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """The optimizer `train.optimizer` names, with its options, for parameters on `device`."""
    import torch

    options = OPTIONS[cfg.optimizer].model_validate(cfg.optimizer_options)
    common = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adamw":
        fused = options.fused if options.fused is not None else device.type in ("cuda", "cpu")
        return torch.optim.AdamW(param_groups, betas=options.betas, eps=options.eps, fused=fused or None, **common)
    if cfg.optimizer == "adafactor":
        if not hasattr(torch.optim, "Adafactor"):  # the requirement admits torch 2.4, which has none
            raise AdaptError(
                f"train.optimizer: 'adafactor' is torch.optim.Adafactor, new in torch 2.5; this is torch "
                f"{torch.__version__}: upgrade torch or choose another optimizer"
            )
        return torch.optim.Adafactor(
            param_groups, beta2_decay=options.beta2_decay, eps=options.eps, d=options.d, **common
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            param_groups,
            momentum=options.momentum,
            dampening=options.dampening,
            nesterov=options.nesterov,
            **common,
        )
    return _adamw_8bit(cfg.optimizer, device, param_groups, options, common)


def _adamw_8bit(name: str, device, param_groups, options: AdamW8bitOptions, common: dict[str, Any]):
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise AdaptError(
            f"train.optimizer: '{name}' needs bitsandbytes; pip install 'adapt-peft[int8]' (or bitsandbytes)"
        ) from None
    kind = bnb.optim.AdamW8bit
    if name == "paged-adamw-8bit":
        if device.type == "cuda":
            kind = bnb.optim.PagedAdamW8bit
        else:
            warnings.warn(
                f"train.optimizer: 'paged-adamw-8bit' pages optimizer state between GPU and CPU memory; on {device} "
                "there is nothing to page, so it runs as 'adamw-8bit' (the same 8-bit state)",
                stacklevel=2,
            )
    return kind(param_groups, betas=options.betas, eps=options.eps, min_8bit_size=options.min_8bit_size, **common)
