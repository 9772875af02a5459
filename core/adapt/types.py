"""Types that plugins see: recipe tables, plugin descriptions and the metrics protocol (`Run` is in adapt.context)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

Kind = Literal["method", "head", "infrastructure"]


class Table(BaseModel):
    """Base class for a recipe table. Unknown keys are errors, values are validated, instances are frozen.

    A plugin subclasses it and declares its keys with types, defaults and pydantic `Field` bounds;
    the recipe loader validates every table before anything heavy loads and reports all problems at once.
    """

    # Numbers must be finite: `learning_rate = inf` or `epochs = nan` are typos, not settings. A string literal
    # under a field is its description (`adapt plugins NAME` shows it), as pydantic's attribute docstrings.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class NoOptions(Table):
    """The table of a plugin that takes no options."""


T = TypeVar("T", bound=Table)


@dataclass(frozen=True)
class PluginInfo:
    """What a plugin says about itself through `adapt_plugin_info`.

    kind: "method" and "head" plugins take part in a run only when the recipe names them;
        "infrastructure" plugins are always on unless the recipe lists them in `plugins.disable`.
    table: the schema of the plugin's recipe table (`[methods.NAME]`, the `[task]` table of a head,
        or `[plugins.NAME]`).
    summary: one line for `adapt plugins`.
    after: methods that, when the recipe also names them, must be applied before this one
        (an 8-bit base must be loaded before LoRA wraps it).
    conflicts: method name -> why the two cannot be combined; checked when the recipe is validated.
    needs_one_of: methods of which the recipe must name at least one beside this one (a quantised
        base trains nothing by itself).
    requires_api: the hook API version the plugin was written for ("1.1"); it is refused (listed as broken,
        with both versions) unless `adapt.HOOK_API` has the same major version and a minor at least as high.
    """

    kind: Kind = "infrastructure"
    table: type[Table] = NoOptions
    summary: str = ""
    after: tuple[str, ...] = ()
    conflicts: Mapping[str, str] = field(default_factory=dict)
    needs_one_of: tuple[str, ...] = ()
    requires_api: str | None = None


class Metrics(Protocol):
    """Evaluation metrics of a head, built fresh for each evaluation by `adapt_make_metrics`.

    Each process feeds `update` with its own share of the eval batches (every example exactly once
    across processes); with several processes the trainer then gathers the metric objects (pickled)
    and `merge`s them, so any metric works, including those that need every prediction (Spearman,
    entity-level F1). Keep state small and on the CPU.
    """

    def update(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> None: ...

    def merge(self, other: Self) -> None: ...

    def compute(self) -> dict[str, float]: ...


def __getattr__(name: str) -> Any:
    if name == "Run":  # moved in 0.1.0: adapt.types no longer depends on the recipe
        warnings.warn("adapt.types.Run moved: import Run from adapt", DeprecationWarning, stacklevel=2)
        from adapt.context import Run

        return Run
    raise AttributeError(f"module 'adapt.types' has no attribute {name!r}")
