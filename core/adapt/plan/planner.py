"""`adapt plan`: the memory a recipe's training needs, estimated before any weight is downloaded or loaded.

The model is built on the meta device from its config, the recipe's methods are applied to it, and one
training forward pass runs on meta tensors of the run's largest batch (batch size x the longest example in
the data, else `data.max_length`) to count what autograd keeps for the backward pass. Weights, gradients and
optimizer state follow from the parameters; what to change when the total does not fit is worked out from
the same counts.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from adapt.errors import DataError
from adapt.model.inference import model_inputs
from adapt.plan.device import Device, GiB, gib_text, parse_device
from adapt.plan.footprint import quantised_weight_bytes
from adapt.plan.meta_models import check_model_config, made_up_labels
from adapt.recipe.loader import Recipe

# On a CPU the measured peak is the process's resident memory, not the live tensors: glibc keeps the pages of
# freed temporaries in its heap (adapt tells it to: train.keep_freed_memory), the heap fragments as batches of
# other lengths come and go, and bf16 autocast and bitsandbytes' 8-bit CPU path (which dequantises each layer's
# weight in both passes) make many more temporaries than they keep. So the CPU estimate is a calibration on top of
# the counts, not a model of the allocator. Fitted (least squares on the relative error) on MiniLM-L6 / SST-2,
# 2,000 rows, batch 32: LoRA, full and 8-bit + LoRA, fp32 and bf16, with and without checkpointing, 12 runs
# (Intel Xeon with AMX, glibc 2.36; bench/plan_accuracy.py; docs/memory.md has the figures):
#   resident peak above the run's baseline ~ weights + CPU_FRAMEWORK_BYTES
#       + CPU_QUANTISED_LOAD x (the quantised layers as loaded, before quantising: their pages stay in the heap)
#       + CPU_STATE_FACTOR x (gradients + optimizer state: they mostly land in pages the first forward pass freed)
#       + kept x (activations as configured + backward working) + forward x (activations without checkpointing
#         + backward working: the forward pass's temporaries, made whether or not checkpointing drops them)
#       + CPU_QUANTISED_FORWARD x (activations without checkpointing + backward working) on a quantised base,
# with (kept, forward) = CPU_FP32 or CPU_AUTOCAST. On CUDA, max_memory_allocated counts the live tensors:
# weights + gradients + state + activations as configured + backward working.
CPU_FRAMEWORK_BYTES = 200 * 2**20  # the model's code, PEFT and bitsandbytes imported, allocator arenas
CPU_QUANTISED_LOAD = 2.0
CPU_STATE_FACTOR = 0.6
CPU_FP32 = (0.75, 0.25)
CPU_AUTOCAST = (0.55, 1.35)
CPU_QUANTISED_FORWARD = 0.7
# ... and over a long run the heap keeps growing, in steps, as batches of other lengths and eval passes come and
# go, until it has room for every pattern: by about CPU_GROWTH_FULL_AT micro-batches, this much more of the
# batch-dependent part, in fp32 and under autocast (whose heap grows most in the first steps, already in
# CPU_AUTOCAST). Fitted on lora-sst2 (fp32) and full-sst2 (bf16) as shipped, 1,250 steps, with and without
# checkpointing. Grown linearly up to then; a plan that does not know the run's length assumes a long one.
CPU_HEAP_GROWTH = (0.6, 0.3)
CPU_GROWTH_FULL_AT = 500
# The backward pass's working memory beyond the saved activations: the gradient of the largest saved tensor
# and a buffer of the same size for the op that produces it.
BACKWARD_LARGEST = 2
# Memory a CUDA process uses outside torch's allocator (context, kernels, cuBLAS workspaces): not part of
# max_memory_allocated, but it has to fit on the card.
CUDA_CONTEXT_BYTES = int(0.75 * GiB)
# Rows of the batch the plan measures when train.batch_size is "auto" (activations scale with the rows).
PROBE_ROWS = 8


@dataclass
class Plan:
    """A recipe's training memory, per stage. All sizes in bytes."""

    model: str
    device: str
    device_kind: str
    capacity: int | None
    batch_size: int
    grad_accum_steps: int
    length: int  # tokens in the run's longest batch
    length_source: str
    precision: str
    gradient_checkpointing: bool
    optimizer: str
    params_total: int
    params_trainable: int
    weights: dict[str, int]  # by dtype / quantisation
    gradients: int
    optimizer_state: int
    activations_without_checkpointing: int
    activations_with_checkpointing: int
    backward_working: int
    notes: list[str] = field(default_factory=list)
    # what the counts allow working out
    float_linear_bytes: int = 0
    float_linear_numel: int = 0
    float_linear_rows: int = 0
    optimizer_state_8bit: int = 0  # what adamw-8bit would keep for the same parameters
    quantised_source_bytes: int = 0  # the quantised layers in the checkpoint's dtype, as loaded
    micro_batches: int | None = None  # the run's length, where the data is at hand

    @property
    def activations(self) -> int:
        """At batch_size, as configured."""
        if self.gradient_checkpointing:
            return self.activations_with_checkpointing
        return self.activations_without_checkpointing

    @property
    def static(self) -> int:
        return self._static(sum(self.weights.values()), self.gradients + self.optimizer_state)

    def _static(self, weights: int, state: int) -> int:
        """Memory that does not grow with the batch: weights, and gradients with optimizer state (on a CPU with
        the framework's and the allocator's share, see CPU_FRAMEWORK_BYTES)."""
        if self.device_kind != "cpu":
            return weights + state
        loading = CPU_FRAMEWORK_BYTES + CPU_QUANTISED_LOAD * self.quantised_source_bytes
        return weights + int(loading + CPU_STATE_FACTOR * state)

    def dynamic(self, batch: int | None = None, checkpointing: bool | None = None) -> int:
        """Activations and backward working memory (with the CPU allocator's share) at `batch` rows."""
        ckpt = self.gradient_checkpointing if checkpointing is None else checkpointing
        acts = self.activations_with_checkpointing if ckpt else self.activations_without_checkpointing
        scale = (batch or self.batch_size) / self.batch_size
        per_batch = acts + self.backward_working
        if self.device_kind == "cpu":
            autocast = self.precision in ("bf16", "fp16")
            kept, forward = CPU_AUTOCAST if autocast else CPU_FP32
            if self.quantised_source_bytes:
                forward += CPU_QUANTISED_FORWARD
            per_batch = kept * per_batch + forward * (self.activations_without_checkpointing + self.backward_working)
            length = CPU_GROWTH_FULL_AT if self.micro_batches is None else self.micro_batches
            per_batch *= 1 + CPU_HEAP_GROWTH[autocast] * min(1.0, length / CPU_GROWTH_FULL_AT)
        return int(per_batch * scale)

    @property
    def planned_peak_bytes(self) -> int:
        """The estimate that summary.json's `memory.measured_peak_bytes` is compared with."""
        return self.static + self.dynamic()

    @property
    def needed(self) -> int:
        """What must fit on the device: the peak plus, on CUDA, the context outside torch's allocator."""
        return self.planned_peak_bytes + (CUDA_CONTEXT_BYTES if self.device_kind == "cuda" else 0)

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.needed <= self.capacity

    def largest_batch(self, checkpointing: bool | None = None, static: int | None = None) -> int:
        """The largest micro-batch (at the longest length) that fits; 0 when not even one row does."""
        if self.capacity is None:
            return 0
        context = CUDA_CONTEXT_BYTES if self.device_kind == "cuda" else 0
        room = self.capacity - context - (self.static if static is None else static)
        return max(0, room // max(self.dynamic(1, checkpointing), 1))

    def advice(self) -> list[str]:
        """What makes the run fit, cheapest change first; each line gives the total with it and those above."""
        if self.fits is not False:
            return []
        context = CUDA_CONTEXT_BYTES if self.device_kind == "cuda" else 0
        weights, optimizer, ckpt = sum(self.weights.values()), self.optimizer_state, self.gradient_checkpointing
        tips: list[str] = []

        def total() -> str:
            static = self._static(weights, self.gradients + optimizer)
            return gib_text(static + self.dynamic(checkpointing=ckpt) + context)

        if not ckpt:
            ckpt = True
            tips.append(f"train.gradient_checkpointing = true: {total()}")
        if self.optimizer == "adamw" and self.optimizer_state_8bit < optimizer:
            optimizer = self.optimizer_state_8bit
            tips.append(f'train.optimizer = "adamw-8bit": {total()}')
        if self.float_linear_numel and 2 * self.params_trainable < self.params_total:
            weights -= self.float_linear_bytes - quantised_weight_bytes(
                self.float_linear_numel, self.float_linear_rows, 4, True
            )
            tips.append(f"a 4-bit base ([methods.int8] bits = 4, under lora): {total()}")
        batch = self.largest_batch(ckpt, self._static(weights, self.gradients + optimizer))
        if 0 < batch < self.batch_size:
            accum = math.ceil(self.batch_size * self.grad_accum_steps / batch)
            tips.append(f"train.batch_size = {batch} with train.grad_accum_steps = {accum} (the same effective batch)")
        elif batch == 0:
            tips.append("not even one row fits with all of the above: choose a smaller model or a larger device")
        return tips

    def at_batch(self, batch: int) -> Plan:
        """The same plan at `batch` rows per micro-batch (activations scale with the rows)."""
        scale = batch / self.batch_size

        def scaled(n: int) -> int:
            return int(n * scale)

        return replace(
            self,
            batch_size=batch,
            activations_without_checkpointing=scaled(self.activations_without_checkpointing),
            activations_with_checkpointing=scaled(self.activations_with_checkpointing),
            backward_working=scaled(self.backward_working),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        internal = (
            "float_linear_bytes",
            "float_linear_numel",
            "float_linear_rows",
            "optimizer_state_8bit",
            "quantised_source_bytes",
            "micro_batches",
        )
        for key in internal:
            data.pop(key)
        data.update(
            activations=self.activations,
            planned_peak_bytes=self.planned_peak_bytes,
            needed_bytes=self.needed,
            fits=self.fits,
            largest_batch=self.largest_batch() if self.capacity is not None else None,
            advice=self.advice(),
        )
        return data

    def one_line(self) -> str:
        verdict = {True: "fits", False: "does NOT fit", None: "capacity unknown"}[self.fits]
        where = f" of {gib_text(self.capacity)} on {self.device}" if self.capacity else ""
        return (
            f"plan: about {gib_text(self.planned_peak_bytes)} at batch {self.batch_size} x {self.length} tokens "
            f"({verdict}{where}); `adapt plan` for the details"
        )


def make_plan(
    recipe: Recipe,
    catalogue,
    device: Device | None = None,
    config_path: str | None = None,
    of_run: Any = None,
) -> Plan:
    """Plan `recipe` for `device` (this machine by default). `of_run`: the Run about to train (`adapt run`),
    whose accelerator, tokenizer and loaded and encoded data the plan uses; without it the plan loads and
    encodes the data itself where it is at hand."""
    import torch

    from adapt.model.build import load_base_model, make_accelerator
    from adapt.model.modeling import count_parameters
    from adapt.plan.footprint import (
        added_parameter_bytes,
        gradient_bytes,
        saved_activations,
        stand_in_for_quantised,
        trainable,
        weight_bytes,
    )
    from adapt.plan.meta_models import models_on_meta
    from adapt.plan.optimizer_state import state_bytes
    from adapt.plugin.hooks import Hooks
    from adapt.run.context import Run
    from adapt.train.precision import resolve_precision

    if config_path is not None:
        given = Path(config_path)
        file = given if given.is_file() else given / "config.json"
        if not file.is_file():
            raise DataError(
                f"--model-config: no config.json at '{config_path}'; give a model's config.json or the folder "
                "holding it"
            )
        check_model_config(file)
    device = device or parse_device(None)
    cfg = recipe.train
    notes: list[str] = []
    hooks = Hooks(catalogue.manager(recipe, infrastructure=False))  # the head and the methods, new instances
    hooks.configure(recipe=recipe)
    accelerator = of_run.accelerator if of_run is not None else make_accelerator(recipe)
    run = Run(recipe=recipe, accelerator=accelerator, output_dir=Path(recipe.output.dir), planning=True)
    if of_run is not None:
        run.tokenizer, run.dataset, run.encoded = of_run.tokenizer, of_run.dataset, of_run.encoded
    elif config_path is not None:  # the model's files are not at hand, so neither is its tokenizer
        notes.append("--model-config: no tokenizer, so every example is counted at data.max_length")
    else:
        _encode_where_at_hand(run, hooks, notes)

    with models_on_meta(config_path):
        load_base_model(run, hooks)
        base = run.model
        base_ids = {id(p) for p in base.parameters()}
        quantization = getattr(base, "adapt_quantization_config", None)
        weights = weight_bytes(base, quantization, skip=list(run.head_modules))
        stand_in_for_quantised(base, quantization)
        for method in recipe.methods:
            hooks.transform_model(run=run, plugin=method)
    model = run.model
    added = added_parameter_bytes(model, base_ids)
    if added:
        weights.by_kind["added by methods"] = added
    params = trainable(model)
    opt_bytes = state_bytes(cfg.optimizer, cfg.optimizer_options, params)
    gradients = gradient_bytes(model)
    n_trainable, n_total = count_parameters(model)

    rows = cfg.batch_size if isinstance(cfg.batch_size, int) else PROBE_ROWS
    batch, length, source = _largest_batch(run, hooks, notes, rows)
    precision, _ = resolve_precision(cfg.precision, device.kind)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model.train()

    def forward() -> tuple[torch.Tensor, Any]:
        inputs = {k: v for k, v in model_inputs(batch).items() if k != "attention_mask"}  # its checks need values
        outputs = model(**inputs)
        loss = hooks.compute_loss(run=run, batch=batch, outputs=outputs)
        terms = hooks.loss_terms(run=run, batch=batch, outputs=outputs)
        return (loss + sum(terms.values()) if terms else loss), outputs  # the loop holds both until backward

    with _no_value_checks():
        acts = saved_activations(model, forward, autocast, device.kind)
    return Plan(
        model=recipe.model.name,
        device=device.label,
        device_kind=device.kind,
        capacity=device.capacity,
        batch_size=rows,
        grad_accum_steps=cfg.grad_accum_steps,
        length=length,
        length_source=source,
        precision=precision,
        gradient_checkpointing=cfg.gradient_checkpointing,
        optimizer=cfg.optimizer,
        params_total=n_total,
        params_trainable=n_trainable,
        weights=weights.by_kind,
        gradients=gradients,
        optimizer_state=opt_bytes if opt_bytes is not None else 2 * gradients,
        activations_without_checkpointing=acts.full,
        activations_with_checkpointing=acts.checkpointed,
        backward_working=BACKWARD_LARGEST * acts.largest,
        notes=notes
        + ([] if opt_bytes is not None else [f"optimizer '{cfg.optimizer}' is a plugin's: state assumed as AdamW's"]),
        float_linear_bytes=weights.float_linear_bytes,
        float_linear_numel=weights.float_linear_numel,
        float_linear_rows=weights.float_linear_rows,
        optimizer_state_8bit=state_bytes("adamw-8bit", {}, params) or 0,
        quantised_source_bytes=weights.quantised_source_bytes,
        micro_batches=_micro_batches(run, rows),
    )


def _micro_batches(run, rows: int) -> int | None:
    """How many micro-batches the run trains on (epochs, or max_steps when fewer), where the data is at hand."""
    cfg = run.recipe.train
    if run.encoded is None:
        return cfg.max_steps * cfg.grad_accum_steps if cfg.max_steps else None
    total = math.ceil(math.ceil(len(run.encoded["train"]) / rows) * cfg.epochs)
    return min(total, cfg.max_steps * cfg.grad_accum_steps) if cfg.max_steps else total


def _encode_where_at_hand(run, hooks, notes: list[str]) -> None:
    """The recipe's encoded data, when its tokenizer and data can be loaded here; else a note."""
    from adapt.loading.splits import load_splits
    from adapt.model.build import encode, load_tokenizer

    recipe = run.recipe
    try:
        run.tokenizer = load_tokenizer(recipe)
        run.dataset = load_splits(recipe.data, seed=recipe.train.seed, train=True)
        encode(run, hooks)
    except (DataError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        notes.append(f"data not at hand ({first[:160]}): every example counted at data.max_length")
        run.encoded = None


@contextlib.contextmanager
def _no_value_checks():
    """Without an attention mask (its checks need real values), transformers looks at token values that meta
    tensors do not have: GPT-2 and others for padding in the input ids, to warn about it; the mask builder for
    sequences packed into one row, in the position ids, when no KV cache is built (a causal LM in training). A
    plan's batch is padded, not packed, and needs no warning: both checks are left out of its forward pass."""
    from transformers import PreTrainedModel, masking_utils

    saved = (PreTrainedModel.warn_if_padding_and_no_attention_mask, masking_utils.find_packed_sequence_indices)
    PreTrainedModel.warn_if_padding_and_no_attention_mask = lambda self, input_ids, attention_mask: None
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        PreTrainedModel.warn_if_padding_and_no_attention_mask, masking_utils.find_packed_sequence_indices = saved


def _largest_batch(run, hooks, notes: list[str], rows: int):
    """A meta batch of the run's largest micro-batch of `rows` rows: the longest training examples collated,
    else rows of `data.max_length` tokens."""
    import torch

    from adapt.model.build import longest_rows

    max_length = run.recipe.data.max_length
    if run.encoded is not None and len(run.encoded["train"]) > 0:
        train = run.encoded["train"]
        batch = hooks.make_collator(run=run)(longest_rows(train, rows))
        length = int(batch["input_ids"].shape[-1])
        source = f"the longest of {len(train):,} training examples"
    else:
        length = max_length
        ids = torch.zeros(rows, length, dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **made_up_labels(run, ids)}
        source = "data.max_length"
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return meta, length, source
