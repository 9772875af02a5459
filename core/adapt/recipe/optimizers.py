"""The built-in optimizers, chosen by `train.optimizer`, with their options in `[train.optimizer_options]`
(validated per optimizer). A plugin offering another one implements `adapt_make_optimizer`."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from adapt.types import Table


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

