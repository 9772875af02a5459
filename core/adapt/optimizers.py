"""The built-in optimizers, chosen by `train.optimizer`, with their options in `[train.optimizer_options]`
(validated per optimizer). A plugin offering another one implements `adapt_make_optimizer`."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from pydantic import Field

from adapt.errors import AdaptError
from adapt.types import Table

if TYPE_CHECKING:
    import torch

    from adapt.types import Run


class AdamWOptions(Table):
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    #: torch's fused kernel (one pass over all parameters), the default on CUDA and CPU; false: the per-tensor loop.
    fused: bool | None = None


class AdamW8bitOptions(Table):
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    #: Tensors with fewer values keep 32-bit state (bitsandbytes' rule: small tensors gain nothing).
    min_8bit_size: int = Field(default=4096, ge=1)


class AdafactorOptions(Table):
    """torch.optim.Adafactor: factored second moments (rows + columns instead of a full matrix), no first
    moment, so its state is a fraction of AdamW's."""

    beta2_decay: float = Field(default=-0.8, le=0)
    eps: tuple[float | None, float] = (None, 1e-3)
    d: float = Field(default=1.0, gt=0, description="clipping threshold of the update's RMS")


class SGDOptions(Table):
    momentum: float = Field(default=0.9, ge=0)
    dampening: float = Field(default=0.0, ge=0)
    nesterov: bool = False


OPTIONS: dict[str, type[Table]] = {
    "adamw": AdamWOptions,
    "adamw-8bit": AdamW8bitOptions,
    "paged-adamw-8bit": AdamW8bitOptions,
    "adafactor": AdafactorOptions,
    "sgd": SGDOptions,
}


def build_optimizer(run: Run, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    import torch

    cfg = run.recipe.train
    options = OPTIONS[cfg.optimizer].model_validate(cfg.optimizer_options)
    common = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay}
    device = run.accelerator.device
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
            f"train.optimizer: '{name}' needs bitsandbytes; pip install 'adapt[int8]' (or bitsandbytes)"
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


def options_problem(optimizer: str, options: dict[str, Any]) -> str | None:
    """What is wrong with `train.optimizer_options` for `optimizer`, in the recipe's words, or None."""
    from pydantic import ValidationError

    table = OPTIONS[optimizer]
    try:
        table.model_validate(options)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            problems.append(f"'{key}': {'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}")
        valid = ", ".join(table.model_fields)
        return f"options of '{optimizer}': {'; '.join(problems)}; valid keys: {valid}"
    return None


def state_bytes(optimizer: str, options: dict[str, Any], params: list[torch.Tensor]) -> int | None:
    """Bytes of optimizer state the built-in `optimizer` keeps for `params` (meta tensors will do), or None for
    an optimizer adapt does not know (a plugin's)."""
    table = OPTIONS.get(optimizer)
    if table is None:
        return None
    opts = table.model_validate(options)
    total, eight_bit_maps = 0, False
    for p in params:
        n, size = _numel(p), p.element_size()
        if optimizer == "adamw":
            total += 2 * n * size  # exp_avg and exp_avg_sq, in the parameter's dtype
        elif optimizer in ("adamw-8bit", "paged-adamw-8bit"):
            # two 1-byte states plus one fp32 absmax per 256-value block each; small tensors stay 32-bit
            total += 2 * (n + 4 * -(-n // 256)) if n >= opts.min_8bit_size else 2 * n * 4
            eight_bit_maps = eight_bit_maps or n >= opts.min_8bit_size
        elif optimizer == "adafactor":
            # factored second moment: a row and a column vector for matrices, the full moment for vectors
            total += (p.shape[-2] + p.shape[-1]) * size if p.dim() >= 2 else n * size
        elif optimizer == "sgd" and opts.momentum > 0:
            total += n * size
    return total + (2 * 256 * 4 if eight_bit_maps else 0)  # the two 256-value quantisation maps, shared


def _numel(param: torch.Tensor) -> int:
    from adapt.modeling import parameter_count

    return parameter_count(param)
