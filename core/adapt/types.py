"""Types that plugins see: recipe tables, plugin descriptions and the metrics protocol (`Run`: adapt.run.context)."""

from __future__ import annotations

import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

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

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads a TOML boolean as 1 or 0 for a number: `learning_rate = true` is a typo
        if isinstance(value, bool) and info.field_name and _wants_number(cls.model_fields[info.field_name].annotation):
            shown = {"value": str(value).lower()}
            raise PydanticCustomError("number_type", "expected a number, got the boolean {value}", shown)
        return value


def _wants_number(annotation: Any) -> bool:
    """Whether a field's type is a number (int or float, maybe optional or beside a literal) and never a boolean."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _wants_number(args[0])
    if origin in (typing.Union, types.UnionType):
        return bool not in args and any(_wants_number(a) for a in args)
    return annotation in (int, float)


class NoOptions(Table):
    """The table of a plugin that takes no options."""


T = TypeVar("T", bound=Table)


class Capability(StrEnum):
    """What a method does, in the words the composition rules read (`PluginInfo.provides`, `needs`, `runs_after`
    and the keys of `conflicts`). A third-party method that declares what it does composes with the built-ins on the
    same terms as a built-in; a plugin may use words of its own for rules among its own family."""

    TRAINS_PRETRAINED_WEIGHTS = "trains-pretrained-weights"
    ADDS_MODULES = "adds-modules"
    KEEPS_BASE_FROZEN = "keeps-base-frozen"
    QUANTISES_BASE = "quantises-base"
    REGULARISER = "regulariser"


#: Each capability as the rules' messages say it ("needs a method that ...").
CAPABILITY_TEXT = {
    Capability.TRAINS_PRETRAINED_WEIGHTS: "trains pretrained weights",
    Capability.ADDS_MODULES: "trains new modules beside the pretrained weights",
    Capability.KEEPS_BASE_FROZEN: "trains while every pretrained weight stays frozen",
    Capability.QUANTISES_BASE: "loads the base quantised",
    Capability.REGULARISER: "adds a regularising loss term",
}


def capability_text(capability: str) -> str:
    return CAPABILITY_TEXT.get(capability, f"provides '{capability}'")  # type: ignore[call-overload]


@dataclass(frozen=True)
class PluginInfo:
    """What a plugin says about itself through `adapt_plugin_info`.

    kind: "method" and "head" plugins take part in a run only when the recipe names them;
        "infrastructure" plugins are always on unless the recipe lists them in `plugins.disable`.
    table: the schema of the plugin's recipe table (`[methods.NAME]`, the `[task]` table of a head,
        or `[plugins.NAME]`).
    summary: one line for `adapt plugins`.
    provides: what the method does (`Capability` values, or words of the plugin's own), which the other
        methods' `needs`, `runs_after` and `conflicts` read.
    needs: capabilities of which another method the recipe names must provide at least one (a quantised base
        trains nothing by itself: `needs=(Capability.KEEPS_BASE_FROZEN,)`).
    runs_after: capabilities: this method is applied after every method the recipe names that provides one (an
        8-bit base must be loaded before LoRA wraps it: LoRA `runs_after=(Capability.QUANTISES_BASE,)`).
    conflicts: a method name or a capability -> why the two cannot be combined; checked when the recipe is
        validated, in both directions.
    opt_in: infrastructure only: take part only in runs whose recipe has a `[plugins.NAME]` table (an early-stopping
        plugin, a tracker of your own), instead of in every run where it is installed; such a plugin then knows
        that the recipe asked for it, and appears in no other run's recipe or summary.
    variants: for a plugin one of whose keys picks among alternatives that bring options of their own (the PEFT
        method of `[methods.peft]`): a function, called only by `adapt plugins`, that returns each alternative's
        name -> its options, as rows of "key", "type", "default" and "description" (`adapt plugins NAME VARIANT`
        lists them).
    requires_api: the hook API version the plugin was written for ("1.3"); it is refused (listed as broken,
        with both versions) unless `adapt.HOOK_API` has the same major version and a minor at least as high.
    after: deprecated since hook API 1.2 (use `runs_after`): method names this one is applied after.
    needs_one_of: deprecated since hook API 1.2 (use `needs`): method names of which the recipe must name one.
        Both still work throughout 1.x, with a DeprecationWarning.
    """

    kind: Kind = "infrastructure"
    table: type[Table] = NoOptions
    summary: str = ""
    provides: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    runs_after: tuple[str, ...] = ()
    conflicts: Mapping[str, str] = field(default_factory=dict)
    opt_in: bool = False
    variants: Callable[[], Mapping[str, Sequence[Mapping[str, str]]]] | None = None
    requires_api: str | None = None
    after: tuple[str, ...] = ()
    needs_one_of: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for old, new in (("after", "runs_after"), ("needs_one_of", "needs")):
            if getattr(self, old):
                warnings.warn(
                    f"PluginInfo.{old} names sibling plugins and is deprecated since hook API 1.2: declare "
                    f"capabilities instead (PluginInfo.{new} with adapt.Capability values)",
                    DeprecationWarning,
                    stacklevel=3,
                )


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

    # Optional: `names()`, the keys `compute` will return. The core asks a fresh metrics object before the first
    # training step and keeps the answer in `run.metric_names`, so that a sweep's objective or a plugin's monitored
    # metric that the head never reports is refused before training, not at the first evaluation.

