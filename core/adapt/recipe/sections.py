"""The core's own recipe tables: [model], [data], [task], [train], [output], [plugins]."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from adapt.recipe.optimizers import options_problem
from adapt.types import Table


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("contains a NUL character, which no file name or hub id can hold")
    return value


#: A file, folder or hub name: any text but NUL (which the operating system refuses in a path).
PathText = Annotated[str, AfterValidator(_no_nul)]


class ModelSection(Table):
    name: PathText = Field(min_length=1)
    """A hub id ("sentence-transformers/all-MiniLM-L6-v2") or a local folder."""
    revision: str | None = None
    """A branch, tag or commit of the hub repository (default: its main branch)."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights' dtype when loading; "auto" keeps the checkpoint's."""
    trust_remote_code: bool = False
    """Only ever true when the recipe says so."""
    trim_top_block: bool | None = None
    """Deprecated: the first-token trim is the head's, `task.trim_top_block` (sequence-classification, multi-label,
    regression). Kept so that recipes and run directories written before hook API 1.2 load; false here still turns
    the trim off."""


class DataSection(Table):
    dataset: PathText | None = None
    """A hub dataset id or a local folder that `datasets.load_dataset` understands ..."""
    config: str | None = None
    """The dataset's configuration name (GLUE's 'sst2')."""
    revision: str | None = None
    """A branch, tag or commit of the hub repository (default: its main branch)."""
    train_split: str = "train"
    """The hub dataset's split to train on."""
    eval_split: str = "validation"
    """The hub dataset's split to evaluate on."""
    train_file: PathText | None = None
    """... or local files (.tsv, .csv, .jsonl, .json, .parquet), relative to the working directory."""
    eval_file: PathText | None = None
    """The local file to evaluate on (with train_file)."""
    max_train_samples: int | None = Field(default=None, ge=1)
    """Keep a random subset of the training split (seeded by train.seed) / the first N eval rows."""
    max_eval_samples: int | None = Field(default=None, ge=1)
    """Evaluate on the first N rows of the eval split only."""
    max_length: int = Field(default=256, ge=8)
    """Longer inputs are truncated to this many tokens."""
    preprocess: PathText | None = None
    """"FILE.py:FUNCTION" (FILE relative to the working directory): called on every raw row, before the head encodes
    it, returning a dict of columns to add or replace (derive a label, build a prompt)."""
    preprocess_batched: bool = False
    """`data.preprocess` gets the raw rows 1,000 at a time in file order, as {column: [values]}, and returns the
    columns of as many new rows as it likes (neighbouring rows joined, one row made into several questions); the
    raw columns are dropped. Train rows are in file order only without max_train_samples (which shuffles)."""

    @field_validator("preprocess")
    @classmethod
    def _file_and_function(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r".+\.py:[A-Za-z_]\w*", value):
            raise ValueError(f"expected 'FILE.py:FUNCTION' (e.g. 'recipes/my_tasks.py:to_prompt'), got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if self.preprocess_batched and self.preprocess is None:
            raise ValueError("preprocess_batched is set but no 'preprocess' function is named")
        has_files = self.train_file is not None or self.eval_file is not None
        if self.dataset is None and not has_files:
            raise ValueError("set either 'dataset' (a hub id or folder) or 'train_file' and 'eval_file'")
        if self.dataset is not None and has_files:
            raise ValueError("set 'dataset' or 'train_file'/'eval_file', not both")
        if has_files and (self.train_file is None or self.eval_file is None):
            raise ValueError("with local files, set both 'train_file' and 'eval_file'")
        return self


class TrainSection(Table):
    epochs: float = Field(default=1.0, gt=0, le=100_000)
    """Passes over the training split; a fraction trains on part of the last one."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps (overrides epochs when smaller)."""
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = 32
    """Rows per micro-batch, or "auto": the largest that fits the device (on CUDA tried, backing off on
    out-of-memory; on a CPU from the memory plan and the free memory), at most `effective_batch_size` (128 when that
    is not set)."""
    eval_batch_size: int | None = Field(default=None, ge=1)
    """Rows per evaluation batch (default: batch_size)."""
    grad_accum_steps: int = Field(default=1, ge=1)
    """Micro-batches whose gradients add up to one optimizer step."""
    effective_batch_size: int | None = Field(default=None, ge=1)
    """Rows per optimizer step: gradient accumulation makes up what the micro-batch does not hold (grad_accum_steps
    = effective_batch_size / batch_size, rounded up). Instead of grad_accum_steps."""
    learning_rate: float = Field(default=5e-4, gt=0)
    """The peak learning rate, reached after the warm-up."""
    optimizer: Literal["adamw", "adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd"] = "adamw"
    """adamw (torch), adamw-8bit / paged-adamw-8bit (bitsandbytes: 1 byte per state value), adafactor, sgd."""
    optimizer_options: dict[str, Any] = {}
    """The chosen optimizer's own options (betas, eps, momentum...), validated against it."""
    weight_decay: float = Field(default=0.01, ge=0)
    """Decoupled weight decay on matrices (never on biases and norms)."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """The learning rate after the warm-up: decays linearly or along a cosine to 0, or stays constant."""
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    """The share of the optimizer steps over which the learning rate rises linearly from 0."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Clip the gradients' global norm to this (none when unset)."""
    eval_every: int | None = Field(default=None, ge=1)
    """Evaluate every N optimizer steps (and always after the last step)."""
    log_every: int = Field(default=10, ge=1)
    """Log the averaged training loss every N optimizer steps."""
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    """Seeds data order, initialisation and dropout: the same seed on one machine gives the same run (0 to 2**32 - 1,
    as numpy and torch take it)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """"auto": bf16 autocast where the device computes bf16 natively (CUDA with bf16; CPUs with AMX or AVX512-BF16),
    else fp32. summary.json records what was chosen and why."""
    group_by_length: bool = True
    """Length-grouped batches: shuffle, sort within pools of `length_pool` batches, shuffle the batches. Grouped
    or not, the batch with the longest example comes first, so a batch too big for memory fails at step 1."""
    length_pool: int = Field(default=64, ge=1)
    """With group_by_length: how many batches' worth of examples are sorted together."""
    num_workers: int = Field(default=0, ge=0)
    """DataLoader worker processes (0: batches are made in the training process)."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them (non-reentrant activation
    checkpointing): less memory for about a third more compute."""
    compile: bool = False
    """torch.compile the model for training (fused kernels instead of many small ones), after a one-off compile on
    the first steps. Off by default: on this project's CPU it did not pay (docs/speed.md, bench/compile.py); try it
    where the run is long and the device fast. summary.json says what compiled and how many graph breaks there were."""
    compile_scope: Literal["blocks", "model"] = "blocks"
    """With compile: each transformer block (regional compilation: one block's compile serves them all, so the run
    starts far sooner) or the whole model."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    """With compile: torch.compile's mode ("reduce-overhead" adds CUDA graphs; "max-autotune" tries kernels)."""
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    """With compile: "inductor" generates kernels (C++ on a CPU, Triton on CUDA); "aot_eager" and "eager" only
    trace, to find graph breaks and compile errors quickly."""
    fast_dropout: bool = True
    """On a CPU: dropout masks from a fast generator seeded by torch's (the same rate, other random numbers than
    torch's own kernel; still reproducible and resumed exactly): dropout about 4x faster. Compiled code (train.compile)
    calls it too."""
    keep_freed_memory: bool = True
    """On Linux: freed memory stays in the process for the next step instead of going back to the OS to be faulted
    in again (glibc mallopt); faster CPU steps, and resident memory stays at its peak."""
    checkpoint_every: int | None = Field(default=None, ge=1)
    """Write a checkpoint every N optimizer steps (default: every eval, else every 500 steps), plus one at each
    epoch end and one when SIGINT/SIGTERM stops the run."""
    keep_checkpoints: int = Field(default=2, ge=0)
    """Checkpoints kept (older ones are deleted); 0 writes none. All are deleted once the run has finished."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A loss that is not finite: "stop" the run (naming the step and terms) or "skip" the step's update."""
    max_nonfinite_skips: int = Field(default=10, ge=1)
    """With nonfinite = "skip": stop after this many skipped steps in a row."""

    @field_validator("optimizer_options")
    @classmethod
    def _options_of_the_optimizer(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        optimizer = info.data.get("optimizer")
        problem = options_problem(optimizer, value) if optimizer else None
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="before")
    @classmethod
    def _accumulate_to_the_effective_batch(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("effective_batch_size") is not None:
            if data.get("grad_accum_steps", 1) != 1:
                raise ValueError("set grad_accum_steps or effective_batch_size, not both")
            batch, effective = data.get("batch_size", 32), data["effective_batch_size"]
            numbers = all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (batch, effective))
            if numbers:  # anything else is the fields' own validation to report
                if batch > effective:
                    raise ValueError(f"batch_size ({batch}) is larger than effective_batch_size ({effective})")
                data = {**data, "grad_accum_steps": -(-effective // batch)}
        return data

    @property
    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or self.eval_every or 500


class OutputSection(Table):
    dir: PathText = Field(min_length=1)
    """The run directory: artifacts, logs, checkpoints and summary.json."""
    overwrite: bool = False
    """Replace an earlier run in `dir`: it is moved aside and deleted once the new run has finished. Without it, a
    `dir` holding a run is an error (or resumed with `adapt run --resume`)."""
    save_artifacts: bool = True
    """Write the trained model's artifacts (false: only metrics and summary.json)."""


class TaskSection(Table):
    """Only `head` is the core's; the head plugin's table validates the other keys of [task]."""

    model_config = Table.model_config | {"extra": "allow"}
    head: str = Field(min_length=1)
    """The head plugin (sequence-classification, token-classification, multi-label, regression, causal-lm...)."""


class PluginsSection(Table):
    """Only `disable` is the core's; `[plugins.NAME]` sub-tables belong to infrastructure plugins."""

    model_config = Table.model_config | {"extra": "allow"}
    disable: list[str] = []


CORE_SECTIONS: dict[str, type[Table]] = {
    "model": ModelSection,
    "data": DataSection,
    "task": TaskSection,
    "train": TrainSection,
    "output": OutputSection,
}
