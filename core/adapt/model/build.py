"""From a validated recipe to a Run whose model has every method applied (used by `run` and `check`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapt.errors import AdaptError, RecipeError
from adapt.loading.hub import from_pretrained_cached
from adapt.loading.splits import load_splits
from adapt.model.modeling import count_parameters, enable_activation_checkpointing
from adapt.model.origins import ParameterOrigins
from adapt.plugin.hooks import Hooks
from adapt.plugin.manager import Catalogue
from adapt.recipe.loader import Recipe
from adapt.run.context import Run
from adapt.train.precision import resolve_precision

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class ParamCount:
    stage: str  # "base" (the head's model) or the name of the method just applied
    trainable: int
    total: int


def make_accelerator(recipe: Recipe):
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # Accelerate keeps process-wide singletons; a second run in the same process (a sweep, a test)
    # may use another precision or accumulation. The distributed PartialState is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    precision, _ = resolve_precision(recipe.train.precision)
    if precision == "fp16" and not torch.cuda.is_available():
        raise AdaptError("train.precision: 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on a CPU")
    return Accelerator(
        mixed_precision=PRECISIONS[precision],
        gradient_accumulation_steps=recipe.train.grad_accum_steps,
        # The core steps the scheduler itself, once per optimizer step, whatever the process count.
        step_scheduler_with_optimizer=False,
    )


def load_tokenizer(recipe: Recipe):
    from transformers import AutoTokenizer

    return from_pretrained_cached(
        AutoTokenizer.from_pretrained,
        recipe.model.name,
        key="model.name",
        revision=recipe.model.revision,
        trust_remote_code=recipe.model.trust_remote_code,
    )


def start_run(recipe: Recipe, catalogue: Catalogue, splits: str | None = "all") -> tuple[Run, Hooks]:
    """Register the recipe's plugins, configure them and load tokenizer and data (no model yet).

    `splits`: "all" (train and eval), "eval" (evaluating a finished run) or None (predicting: no data)."""
    from accelerate.utils import set_seed

    hooks = Hooks(catalogue.manager(recipe))
    hooks.configure(recipe=recipe)
    run = Run(recipe=recipe, accelerator=make_accelerator(recipe), output_dir=Path(recipe.output.dir))
    run._collator = lambda: hooks.make_collator(run=run)
    set_seed(recipe.train.seed)
    run.tokenizer = load_tokenizer(recipe)
    if splits is not None:
        run.dataset = load_splits(recipe.data, seed=recipe.train.seed, train=splits == "all")
    return run, hooks


def encode(run: Run, hooks: Hooks) -> None:
    """The head encodes the loaded splits into `run.encoded` (plain Python values, no tensor format)."""
    run.encoded = hooks.encode(run=run, dataset=run.dataset).with_format(None)


def token_lengths(split) -> list[int]:
    """Each encoded example's token count, read from the Arrow column (no Python list per example)."""
    import pyarrow.compute as pc

    return pc.list_value_length(split.with_format("arrow")["input_ids"]).to_pylist()


def longest_rows(split, rows: int) -> list[dict]:
    """The `rows` longest encoded examples (repeated when the split has fewer): the batch with the most tokens."""
    lengths = token_lengths(split)
    longest = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)[:rows]
    examples = [split[i] for i in longest]
    return (examples * -(-rows // max(len(examples), 1)))[:rows]


def check_max_length(run: Run) -> None:
    """`data.max_length` against the model's positions, from its config alone: before the weights load,
    instead of an index error in the middle of training."""
    from adapt.model.modeling import model_config

    config = model_config(run)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    length = run.recipe.data.max_length
    if isinstance(positions, int) and length > positions:
        raise RecipeError(
            run.recipe.source,
            [
                f"data.max_length: {length} tokens, but {run.recipe.model.name} has {positions} positions; use at most "
                f"{positions}"
            ],
        )


def load_base_model(run: Run, hooks: Hooks) -> None:
    check_max_length(run)
    run.head_modules = hooks.head_modules(run=run) or []
    kwargs = {
        "revision": run.recipe.model.revision,
        "trust_remote_code": run.recipe.model.trust_remote_code,
        "dtype": _dtype(run.recipe.model.dtype),
    }
    kwargs.update(hooks.model_load_kwargs(run=run))
    run.model = hooks.load_model(run=run, load_kwargs=kwargs)
    run._origins = ParameterOrigins(run.model, run.head_prefixes)
    hooks.on_model_loaded(run=run)


def build_model(run: Run, hooks: Hooks) -> list[ParamCount]:
    """Load the head's model and apply each method in order; the parameter counts after each stage."""
    load_base_model(run, hooks)
    counts = [ParamCount("base", *count_parameters(run.model))]
    for method in run.recipe.methods:
        hooks.transform_model(run=run, plugin=method)
        counts.append(ParamCount(method, *count_parameters(run.model)))
    cfg = run.recipe.train
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(run.model)
    if cfg.compile and not run.planning:
        from adapt.speed.compiling import compile_model

        device = run.accelerator.device.type
        run.compiled = compile_model(run.model, cfg.compile_scope, cfg.compile_mode, cfg.compile_backend, device)
    return counts


def restore_model(run: Run, hooks: Hooks, directory: Path) -> None:
    """Load the head's model and each method's saved artifacts from a finished run's directory."""
    hooks.restore_state(run=run, directory=directory)
    load_base_model(run, hooks)
    for method in run.recipe.methods:
        hooks.load_artifacts(run=run, directory=directory, plugin=method)


def _dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)
