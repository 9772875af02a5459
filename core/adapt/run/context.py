"""The run context: everything one run shares with its plugins (`adapt.Run`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, overload

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from accelerate import Accelerator
    from datasets import DatasetDict

    from adapt.model.origins import Origin, ParameterOrigins
    from adapt.recipe.loader import Recipe
    from adapt.types import T, Table


StopKind = Literal["early-stopped", "pruned"]
STOP_KINDS: tuple[str, ...] = get_args(StopKind)


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
    dataset: DatasetDict | None = None
    """Raw splits "train" and "eval" as loaded from the recipe's [data] table."""
    encoded: DatasetDict | None = None
    """The same splits after the head's `adapt_encode`."""
    model: torch.nn.Module | None = None
    head_modules: list[str] = field(default_factory=list)
    """Names of the modules the head creates fresh ("classifier"; a dotted path such as "cls.predictions.transform"
    when only part of a module is new): named by the head through `adapt_head_modules` before loading, confirmed in
    `adapt_load_model`. Methods keep them trainable (and unquantised) and save them with their artifacts."""
    task_type: str | None = None
    """PEFT's name for the head's task ("SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM", ...), or None."""
    merge_tolerance: float = 1e-3
    """Largest logit difference `adapt export --merge` accepts between the export and the run. A method whose merge
    changes the arithmetic (an 8-bit base, dequantised) raises it in `adapt_export_model`."""
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    step: int = 0
    """Optimizer steps taken so far and the run's total."""
    max_steps: int = 0
    epoch: int = 0
    samples_seen: int = 0
    started_at: float = field(default_factory=time.perf_counter)
    resumed_from: Path | None = None
    """The checkpoint this run continues from (`adapt run --resume`), else None. Set before `adapt_on_train_start`,
    when `step`, `epoch` and `samples_seen` already hold the checkpoint's values."""
    planning: bool = False
    """True in `adapt plan` (and the estimate `adapt run` prints first): the model is built on the meta device from
    its config (shapes, no weights, no memory) and methods are applied to it. Skip work that needs real tensors or
    the device (a kernel probe, a feature cache); nothing is trained or saved."""
    compiled: dict[str, Any] | None = None
    """What `train.compile` compiled, in place (scope, modules, mode, backend), once the methods are applied; None
    when nothing was. A plugin that replaces a compiled block's forward (as the prefix cache does) also takes the block
    out of the compiled code while it does: dynamo guards on each block's forward."""
    stop_reason: str | None = None
    """Why training ends before ``max_steps``, once a plugin has called ``request_stop``; else None."""
    metric_names: list[str] | None = None
    """The names the head's evaluations report (its metrics' `names()`), known before the first training step;
    None where the head's metrics do not say."""
    stop_kind: StopKind | None = None
    """What ended training early: "early-stopped" (the run is a result, e.g. its metric stopped improving) or
    "pruned" (a sweep's pruner gave the trial up); None while it goes on."""
    _origins: ParameterOrigins | None = field(default=None, init=False, repr=False)
    """Recorded by the core when the head's model is loaded (see `parameter_origin`)."""
    _collator: Callable[[], Callable[[list[dict[str, Any]]], dict[str, Any]]] | None = field(
        default=None, init=False, repr=False
    )
    """The head's collator, asked for by `training_batches` (the core sets it when it registers the plugins)."""

    def request_stop(self, reason: str, kind: StopKind = "early-stopped") -> None:
        """End training after the current optimizer step. The run then finishes as usual: a final evaluation (this
        step's, when it has just evaluated), the artifacts and summary.json, whose ``stopped_early`` holds `reason`
        and ``stop_kind`` `kind`: "early-stopped" for a run whose result stands (early stopping: `adapt sweep` counts
        it as a completed trial, with its final metric), "pruned" for one given up (a sweep's pruner). The first
        request wins. With several processes, every process must make the same request (decide from the gathered
        metrics of ``adapt_on_evaluate``)."""
        if kind not in STOP_KINDS:
            raise ValueError(f"run.request_stop: kind must be one of {', '.join(STOP_KINDS)}, not {kind!r}")
        if self.stop_reason is None:
            self.stop_reason, self.stop_kind = reason, kind

    def note(self, message: str) -> None:
        """Print `note: MESSAGE` on stderr, from the main process only. While the progress bar is live it redirects
        stderr, so the line appears above the bar; `warnings.warn` takes the same way."""
        if self.is_main_process:
            print(f"note: {message}", file=sys.stderr, flush=True)

    @overload
    def table(self, plugin: type[T]) -> T: ...

    @overload
    def table(self, plugin: str) -> Table: ...

    def table(self, plugin: str | type[Table]) -> Table:
        """The validated recipe table of `plugin` (its defaults when the recipe has none): `run.table(LoraTable)`
        by the plugin's own Table class, typed as that class, or `run.table("lora")` by name."""
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

    def peft_task_type(self, prompt_learning: bool = False) -> str | None:
        """The task type for a PEFT config built for this run: `task_type`, except for question answering outside
        prompt learning, where it is None (a plain `PeftModel`). PeftModelForQuestionAnswering's forward drops
        `token_type_ids` and `position_ids` unless the method is prompt learning (PEFT 0.21), so a BERT-style QA
        model would train without its segment ids and differ from its merged export; a plain PeftModel passes every
        input on, and reloads with `PeftModel.from_pretrained` as the same."""
        if self.task_type == "QUESTION_ANS" and not prompt_learning:
            return None
        return self.task_type

    def training_batches(self, count: int, batch_size: int | None = None) -> list[dict[str, Any]]:
        """`count` batches of `batch_size` (default `train.batch_size`) encoded training examples, drawn at random
        without replacement (seeded by `train.seed`, so the same every time and on every process, and leaving the
        run's random streams alone), padded by the head's collator, as plain dicts on the run's device: for a method
        that initialises from data (LoRA's EVA). Fewer batches when the split is smaller. Call it from
        `adapt_transform_model` on; the batches include the labels and per-example data (`adapt.model_inputs` takes
        the latter out)."""
        import random

        from accelerate.utils import send_to_device

        if self.encoded is None or self._collator is None:
            raise RuntimeError("run.training_batches: the training data is encoded before adapt_transform_model")
        split = self.encoded["train"]
        size = batch_size or (self.recipe.train.batch_size if isinstance(self.recipe.train.batch_size, int) else 32)
        order = random.Random(self.recipe.train.seed).sample(range(len(split)), min(len(split), count * size))
        collate = self._collator()
        batches = [collate([split[i] for i in order[start : start + size]]) for start in range(0, len(order), size)]
        return [dict(send_to_device(batch, self.accelerator.device)) for batch in batches]

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
