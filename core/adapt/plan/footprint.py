"""Bytes a model holds in training, counted on a meta-device model: weights by dtype and quantisation, and the
activations autograd keeps for the backward pass (found by running the forward pass on the meta device)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from adapt.model.modeling import find_blocks, parameter_count
from adapt.speed.trim import reads_first_row_only

DTYPE_LABELS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def dtype_label(dtype: torch.dtype) -> str:
    return DTYPE_LABELS.get(dtype, str(dtype).removeprefix("torch."))


def _matches(name: str, keys: list[str]) -> bool:
    """transformers' rule for `llm_int8_skip_modules`: a key names the module or one of its ancestors."""
    return any(name == k or name.startswith(f"{k}.") or f".{k}." in f".{name}." for k in keys)


def quantised_linears(model: torch.nn.Module, config: Any) -> dict[str, torch.nn.Linear]:
    """The linear layers that `config` (a transformers BitsAndBytesConfig) quantises when loading."""
    if config is None or not (getattr(config, "load_in_8bit", False) or getattr(config, "load_in_4bit", False)):
        return {}
    skip = _not_converted(model, getattr(config, "llm_int8_skip_modules", None))
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not _matches(name, skip)
    }


def _not_converted(model: torch.nn.Module, skip: list[str] | None) -> list[str]:
    """transformers' rule: the recipe's skip list, or when there is none its defaults (the output layer and
    what ties to it); plus the modules the model class keeps in fp32."""
    keys = list(skip or [])
    if skip is None:
        try:
            from transformers.quantizers.base import get_keys_to_not_convert

            keys += get_keys_to_not_convert(model)
        except ImportError:  # older transformers: the output layer, as it chooses
            output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            keys += [n for n, m in model.named_modules() if output is not None and m is output]
    return keys + list(getattr(model, "_keep_in_fp32_modules", None) or [])


def quantised_weight_bytes(numel: int, rows: int, bits: int, double_quant: bool) -> int:
    """bitsandbytes' storage for one weight matrix: LLM.int8 keeps 1 byte per value and an fp32 scale per row;
    NF4/FP4 half a byte per value and one absmax per 64 values (1 byte with nested quantisation, which adds
    an fp32 scale per 256 absmax values, else fp32)."""
    if bits == 8:
        return numel + 4 * rows
    blocks = -(-numel // 64)
    return numel // 2 + (blocks + 4 * -(-blocks // 256) if double_quant else 4 * blocks)


@dataclass
class Weights:
    by_kind: dict[str, int]  # "fp32", "bf16", "int8", "nf4"... -> bytes
    float_linear_bytes: int  # the linear layers a 4-bit base would quantise, at their current dtype
    float_linear_numel: int
    float_linear_rows: int
    quantised_source_bytes: int = 0  # the quantised layers as loaded (in the checkpoint's dtype), before quantising

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


def weight_bytes(model: torch.nn.Module, quantization_config: Any, skip: list[str]) -> Weights:
    """The base model's weights and buffers as they will be loaded, by dtype and quantisation."""
    by_kind: dict[str, int] = defaultdict(int)
    quantised = quantised_linears(model, quantization_config)
    bits = 8 if quantised and getattr(quantization_config, "load_in_8bit", False) else 4
    kind = "int8" if bits == 8 else str(getattr(quantization_config, "bnb_4bit_quant_type", "nf4"))
    double = bool(getattr(quantization_config, "bnb_4bit_use_double_quant", False))
    quantised_weights = {id(m.weight) for m in quantised.values()}
    for module in quantised.values():
        w = module.weight
        by_kind[kind] += quantised_weight_bytes(w.numel(), w.shape[0], bits, double)
    for param in model.parameters():
        if id(param) not in quantised_weights:
            by_kind[dtype_label(param.dtype)] += param.numel() * param.element_size()
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    if buffers:
        by_kind["buffers"] = buffers
    candidates = [
        m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not _matches(n, skip) and id(m.weight) not in quantised_weights
    ]
    return Weights(
        by_kind=dict(by_kind),
        float_linear_bytes=sum(m.weight.numel() * m.weight.element_size() for m in candidates),
        float_linear_numel=sum(m.weight.numel() for m in candidates),
        float_linear_rows=sum(m.weight.shape[0] for m in candidates),
        quantised_source_bytes=sum(m.weight.numel() * m.weight.element_size() for m in quantised.values()),
    )


def added_parameter_bytes(model: torch.nn.Module, base_ids: set[int]) -> int:
    """Bytes of the parameters methods added (LoRA matrices, adapters), not in the base model."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in base_ids)


def trainable(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def gradient_bytes(model: torch.nn.Module) -> int:
    return sum(parameter_count(p) * p.element_size() for p in trainable(model))


@dataclass
class Activations:
    """What autograd keeps between the forward and the backward pass, for one batch."""

    outside_blocks: int = 0  # embeddings, head, loss
    per_block: list[int] = field(default_factory=list)  # saved inside each transformer block
    block_inputs: list[int] = field(default_factory=list)  # each block's input (what checkpointing keeps)
    largest: int = 0  # the largest saved tensor (its gradient is the backward's biggest buffer)
    held: int = 0  # kept for the backward pass outside autograd's saved tensors (see QuantisedOnMeta)

    @property
    def full(self) -> int:
        return self.outside_blocks + sum(self.per_block) + self.held

    @property
    def checkpointed(self) -> int:
        """Non-reentrant checkpointing keeps the input of each block that needs a backward pass (a frozen block
        under a trained one needs none) and recomputes one block at a time; what is held outside autograd
        stays."""
        kept = sum(size for size, saved in zip(self.block_inputs, self.per_block, strict=True) if saved)
        return self.outside_blocks + kept + max(self.per_block, default=0) + self.held


# torch.autocast's op lists (torch/csrc/autograd/autocast docs), by the names the ops have at the Python level:
# these run in the low-precision dtype ...
LOW_PRECISION_OPS = {
    "linear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "addmv",
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "scaled_dot_product_attention", "prelu",
}  # fmt: skip
# ... and these in fp32 (more of them on CUDA, where norms and softmax are kept in fp32 too).
FP32_OPS_CPU = {
    "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "cosine_embedding_loss", "margin_ranking_loss",
}  # fmt: skip
FP32_OPS_CUDA = FP32_OPS_CPU | {
    "softmax", "log_softmax", "layer_norm", "group_norm", "norm", "exp", "log", "pow", "__pow__", "sum", "cumsum",
    "cosine_similarity", "rsqrt", "erfinv", "acos", "asin", "cosh", "sinh", "tan", "reciprocal",
}  # fmt: skip


class AutocastOnMeta(TorchFunctionMode):
    """torch.autocast's casts, which do not run on the meta device: the inputs of matmul-like ops cast to the
    low-precision dtype (new tensors that autograd then keeps, as under autocast; a frozen weight's copy among
    them), the inputs of fp32 ops cast back to fp32."""

    def __init__(self, dtype: torch.dtype, device_kind: str):
        super().__init__()
        self.dtype = dtype
        self.fp32_ops = FP32_OPS_CUDA if device_kind == "cuda" else FP32_OPS_CPU

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = self.dtype if name in LOW_PRECISION_OPS else torch.float32 if name in self.fp32_ops else None
        if target is not None:

            def cast(value):
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != target:
                    return value.to(target)
                return value

            args = tuple(cast(a) for a in args)
            kwargs = {k: cast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


class _QuantisedMatmul(torch.autograd.Function):
    """bitsandbytes' matmul as autograd sees it: one node that saves no tensor (its weight is dequantised inside,
    so no cast copy of the weight is kept, as autocast would keep for a plain linear)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # never runs: the plan counts the forward pass only
        raise NotImplementedError


class QuantisedOnMeta(torch.nn.Linear):
    """A layer bitsandbytes will quantise, on the meta device: not a plain `nn.Linear`, so no method treats it
    as one (it would not the real `Linear8bitLt` / `Linear4bit`). `keeps_input`: LLM.int8's autograd function
    keeps the layer's input on its context (`ctx.A`), outside autograd's saved tensors, so activation
    checkpointing cannot drop it; `saved_activations` counts it as held."""

    keeps_input = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuantisedMatmul.apply(x, self.weight, self.bias)


def stand_in_for_quantised(model: torch.nn.Module, config: Any) -> None:
    """Turn the linear layers `config` quantises into `QuantisedOnMeta` (in place)."""
    for module in quantised_linears(model, config).values():
        module.__class__ = QuantisedOnMeta
        module.keeps_input = bool(getattr(config, "load_in_8bit", False))


def saved_activations(
    model: torch.nn.Module,
    forward: Callable[[], Any],
    autocast_dtype: torch.dtype | None = None,
    device_kind: str = "cpu",
) -> Activations:
    """Run `forward` (on meta tensors) and count, by transformer block, the tensors autograd saves for the
    backward pass, and the tensors `forward` returns (the loss, the model's outputs: held until the backward pass);
    parameters and buffers are not counted (they are weights). With `autocast_dtype`, the forward
    pass runs under `AutocastOnMeta` as it would under torch.autocast on `device_kind`."""
    owned = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
    try:
        _, blocks = find_blocks(model)
    except ValueError:
        blocks = []
    result = Activations(per_block=[0] * len(blocks), block_inputs=[0] * len(blocks))
    seen: set[int] = set()
    where: list[int | None] = [None]

    def new_bytes(tensor: torch.Tensor) -> int:
        """The tensor's storage size the first time it is met (0 after that, and for weights)."""
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in owned or key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        size = new_bytes(tensor)
        if not size:
            return tensor
        result.largest = max(result.largest, size)
        if where[-1] is None:
            result.outside_blocks += size
        else:
            result.per_block[where[-1]] += size
        return tensor

    def enter(index: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if isinstance(hidden, torch.Tensor):
                result.block_inputs[index] = hidden.numel() * hidden.element_size()
            where.append(index)

        return hook

    @reads_first_row_only  # reads none: a trimmed top block stays trimmed (adapt.speed.trim), as in training
    def leave(module, args, output):
        where.pop()

    held: list[torch.Tensor] = []  # alive as in the real layers, so no later tensor reuses a storage key

    def hold(module, args):
        tensor = args[0] if args else None
        if isinstance(tensor, torch.Tensor) and torch.is_grad_enabled():
            result.held += new_bytes(tensor)
            held.append(tensor)

    handles = [m.register_forward_pre_hook(hold) for m in model.modules() if getattr(m, "keeps_input", False)]
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(enter(i), with_kwargs=True))
        handles.append(block.register_forward_hook(leave))
    try:
        casts = AutocastOnMeta(autocast_dtype, device_kind) if autocast_dtype is not None else nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), casts:
            returned = forward()
    finally:
        for handle in handles:
            handle.remove()
    for tensor in _tensors_in(returned):  # held by the training loop until the backward pass: a causal LM's logits
        result.outside_blocks += new_bytes(tensor)
    return result


def _tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors in what a forward pass returned: a tensor, a model output (a mapping) or a tuple of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors_in(item)]
    return []
