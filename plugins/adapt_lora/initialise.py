"""LoRA initialisations beyond PEFT's default: the data-driven ones (EVA, CorDA) get their batches from the run's
training data, and those that move part of each base weight into the adapter (PiSSA, OLoRA, CorDA) are saved so
that the adapter applies to the unchanged base.

PiSSA and friends start from W = W_res + B0 A0 and train W_res + B A, so the trained update on the original W is
B A - B0 A0 = [B | -B0] [A ; A0]: a plain LoRA adapter of rank 2r with the same scaling (PEFT's
`path_initial_model_for_weight_conversion` does this too, but drops the head's `modules_to_save`).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from adapt import RecipeError, Run, model_inputs


def refuse_quantised_base(model: torch.nn.Module, init: str) -> None:
    """A quantised base cannot hold the residual weight these initialisations write into it."""
    if any(getattr(m, "hf_quantizer", None) is not None for m in model.modules()):
        raise RecipeError(
            f"methods.lora.init = {init!r} rewrites each adapted base weight (W minus the adapter's starting part), "
            "which a quantised base ([methods.int8]) cannot hold: use init = 'default', 'gaussian' or 'eva', or "
            "leave the base unquantised"
        )


@contextlib.contextmanager
def _reading_data(model: torch.nn.Module) -> Iterator[None]:
    """Forward passes that change nothing of the run: no gradients, no dropout, the random streams kept."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            yield
    finally:
        model.train(was_training)


def _batches(run: Run, examples: int, batch_size: int) -> list[dict[str, Any]]:
    return [model_inputs(batch) for batch in run.training_batches(-(-examples // batch_size), batch_size)]


def eva(run: Run, examples: int) -> None:
    """EVA: each adapted layer's A from the right singular vectors of its inputs on `examples` training examples
    (PEFT cycles through their batches until the components converge), the ranks redistributed by explained
    variance."""
    from peft import initialize_lora_eva_weights
    from peft.tuners.lora.eva import prepare_layer_inputs_fn_language_modeling as token_rows

    def layer_rows(layer_input, model_input, layer_name):
        rows = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
        if rows.dim() == 2:  # one row per example already (a pooler's dense layer reads the first token)
            return rows
        if rows.shape[1] == 1:  # a block trimmed to the first token (task.trim_top_block)
            return rows[:, 0].contiguous()
        return token_rows(rows, model_input, layer_name)

    batch_size = run.recipe.train.batch_size
    batches = _batches(run, examples, batch_size if isinstance(batch_size, int) else 32)
    with _reading_data(run.model):
        initialize_lora_eva_weights(
            run.model, dataloader=batches, prepare_layer_inputs_fn=layer_rows, show_progress_bar=False
        )


def corda_statistics(run: Run, config: Any, examples: int) -> None:
    """CorDA: the input covariance of each target layer on `examples` training examples, one at a time (PEFT's
    statistics read one unpadded sequence per call), before PEFT decomposes the weights."""
    from peft.tuners.lora.corda import preprocess_corda

    batches = _batches(run, examples, 1)

    def forward() -> None:
        for batch in batches:
            run.model(**batch)

    with _reading_data(run.model):
        _refuse_layers_without_tokens(run.model, config, batches[0])
        preprocess_corda(run.model, config, run_model=forward)


def _refuse_layers_without_tokens(model: torch.nn.Module, config: Any, batch: dict[str, Any]) -> None:
    """CorDA's statistics take each target layer's input as (tokens, features) of one example: a layer that reads one
    row per example (a pooler's dense layer reads the first token) would give it a vector and fail deep in PEFT."""
    from peft.tuners.lora.corda import target_modules

    flat: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda m, args, name=name: flat.append(name) if args[0].dim() < 3 else None)
        for name, module in target_modules(model, config)
    ]
    try:
        model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    if flat:
        names = sorted(set(flat))
        raise RecipeError(
            f"methods.lora.init = 'corda' needs per-token inputs, and {', '.join(names)} reads one row per example: "
            f"add it to methods.lora.exclude_modules (e.g. exclude_modules = {json.dumps(names)})"
        )


def adapter_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's A and B as initialised, by their names in PEFT's saved state dict."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}


def as_plain_lora(folder: Path, initial: dict[str, torch.Tensor]) -> None:
    """Rewrite the adapter PEFT saved in `folder` as the plain LoRA adapter of rank 2r that applies to the original
    base weights: [A ; A0] and [B | -B0], twice the rank and alpha (the scaling unchanged)."""
    from safetensors.torch import load_file, save_file

    weights_file = folder / "adapter_model.safetensors"
    tensors = load_file(weights_file)
    for name, start in initial.items():
        if name not in tensors:
            raise RuntimeError(f"methods.lora: the saved adapter lacks {name}, which the initialisation made")
        dim = 0 if ".lora_A." in name else 1
        sign = 1 if dim == 0 else -1
        tensors[name] = torch.cat([tensors[name], sign * start.to(tensors[name].dtype)], dim=dim).contiguous()
    save_file(tensors, weights_file, metadata={"format": "pt"})
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["init_lora_weights"] = True
    config["r"] *= 2
    config["lora_alpha"] *= math.sqrt(2) if config.get("use_rslora") else 2
    for key in ("rank_pattern", "alpha_pattern"):
        config[key] = {k: 2 * v for k, v in (config.get(key) or {}).items()}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
