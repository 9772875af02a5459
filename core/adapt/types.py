"""Types that plugins see: recipe tables, plugin descriptions, the run context and the metrics protocol."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from datasets import DatasetDict

    from adapt.origins import Origin, ParameterOrigins
    from adapt.recipe import Recipe

Kind = Literal["method", "head", "infrastructure"]


class Table(BaseModel):
    """Base class for a recipe table. Unknown keys are errors, values are validated, instances are frozen.

    A plugin subclasses it and declares its keys with types, defaults and pydantic `Field` bounds;
    the recipe loader validates every table before anything heavy loads and reports all problems at once.
    """

    # Numbers must be finite: `learning_rate = inf` or `epochs = nan` are typos, not settings.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


class NoOptions(Table):
    """The table of a plugin that takes no options."""


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
    """

    kind: Kind = "infrastructure"
    table: type[Table] = NoOptions
    summary: str = ""
    after: tuple[str, ...] = ()
    conflicts: Mapping[str, str] = field(default_factory=dict)
    needs_one_of: tuple[str, ...] = ()


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


@dataclass
class Run:
    """Everything one run shares with its plugins. The core fills fields as the run advances.

    Plugins read what they need and may replace `model` (in `adapt_transform_model` and
    `adapt_load_artifacts`). Fields that are not set yet are None.
    """

    recipe: Recipe
    accelerator: Accelerator
    output_dir: Path
    tokenizer: Any = None
    #: Raw splits "train" and "eval" as loaded from the recipe's [data] table.
    dataset: DatasetDict | None = None
    #: The same splits after the head's `adapt_encode`.
    encoded: DatasetDict | None = None
    model: torch.nn.Module | None = None
    #: Names of the modules the head creates fresh ("classifier"; a dotted path such as
    #: "cls.predictions.transform" when only part of a module is new): named by the head through
    #: `adapt_head_modules` before loading, confirmed in `adapt_load_model`. Methods keep them trainable
    #: (and unquantised) and save them with their artifacts.
    head_modules: list[str] = field(default_factory=list)
    #: PEFT's name for the head's task ("SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM", ...), or None.
    task_type: str | None = None
    #: Largest logit difference `adapt export --merge` accepts between the export and the run. A method
    #: whose merge changes the arithmetic (an 8-bit base, dequantised) raises it in `adapt_export_model`.
    merge_tolerance: float = 1e-3
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    #: Optimizer steps taken so far and the run's total.
    step: int = 0
    max_steps: int = 0
    epoch: int = 0
    samples_seen: int = 0
    started_at: float = field(default_factory=time.perf_counter)
    #: The checkpoint this run continues from (`adapt run --resume`), else None. Set before
    #: `adapt_on_train_start`, when `step`, `epoch` and `samples_seen` already hold the checkpoint's values.
    resumed_from: Path | None = None
    #: True in `adapt plan` (and the estimate `adapt run` prints first): the model is built on the meta device
    #: from its config (shapes, no weights, no memory) and methods are applied to it. Skip work that needs real
    #: tensors or the device (a kernel probe, a feature cache); nothing is trained or saved.
    planning: bool = False
    #: Why training ends before ``max_steps``, once a plugin has called ``request_stop``; else None.
    stop_reason: str | None = None
    #: Recorded by the core when the head's model is loaded (see `parameter_origin`).
    _origins: ParameterOrigins | None = field(default=None, init=False, repr=False)

    def request_stop(self, reason: str) -> None:
        """End training after the current optimizer step (early stopping, a sweep pruning a trial). The run
        then finishes as usual: a final evaluation (this step's, when it has just evaluated), the artifacts and
        summary.json, whose ``stopped_early`` holds `reason`. The first request wins. With several processes,
        every process must make the same request (decide from the gathered metrics of ``adapt_on_evaluate``)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def note(self, message: str) -> None:
        """Print `note: MESSAGE` on stderr, from the main process only. While the progress bar is live it redirects
        stderr, so the line appears above the bar; `warnings.warn` takes the same way."""
        if self.is_main_process:
            print(f"note: {message}", file=sys.stderr, flush=True)

    def table(self, plugin: str) -> Table:
        """The validated recipe table of `plugin` (its defaults when the recipe has none)."""
        return self.recipe.table(plugin)

    def parameter_origin(self, name: str, param: torch.nn.Parameter) -> Origin:
        """Where parameter `param` of the model (named `name` in it now) came from: "head" (the modules the head
        created, including a trainable copy a wrapper made of them), "pretrained" (loaded from the checkpoint) or
        "method" (added by a method: LoRA's A and B, an adapter). Valid from `adapt_on_model_loaded` on, however
        methods have wrapped or renamed the model since."""
        return self._loaded_origins().origin(name, param)

    def head_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The head's parameters, by their current names in `unwrapped_model`."""
        return self._parameters_from("head")

    def pretrained_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters loaded from the pretrained checkpoint (never the head's), by their current names in
        `unwrapped_model`, trainable or not."""
        return self._parameters_from("pretrained")

    def _loaded_origins(self) -> ParameterOrigins:
        if self._origins is None:
            raise RuntimeError("parameter origins are known once the model is loaded (from adapt_on_model_loaded on)")
        return self._origins

    def _parameters_from(self, origin: Origin) -> dict[str, torch.nn.Parameter]:
        origins = self._loaded_origins()
        return {n: p for n, p in self.unwrapped_model.named_parameters() if origins.origin(n, p) == origin}

    @property
    def head_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes of the head modules ("classifier."), for `name.startswith(...)`."""
        return tuple(f"{name}." for name in self.head_modules)

    @property
    def checkpoints_dir(self) -> Path:
        """`OUTPUT/checkpoints`: the run's checkpoints (`step-N`). A plugin whose checkpoint state refers to
        large files keeps them in a sub-folder named after itself; all of it is deleted once the run finishes."""
        return self.output_dir / "checkpoints"

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """The model without Accelerate's distributed/compile wrappers (what `save_pretrained` needs)."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process
