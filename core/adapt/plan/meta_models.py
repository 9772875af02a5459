"""Models built on the meta device from their config alone, for `adapt plan`: shapes and dtypes, no weights
downloaded, no memory used. While `models_on_meta()` is active, `from_pretrained_cached` (which every built-in
head loads through) builds the model this way instead of loading it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from adapt.errors import DataError

_META: ContextVar[dict[str, Any] | None] = ContextVar("adapt_models_on_meta", default=None)

# from_pretrained keyword arguments about loading; everything else sets a config attribute (num_labels...)
LOADING_KEYS = {
    "dtype",
    "torch_dtype",
    "quantization_config",
    "device_map",
    "revision",
    "trust_remote_code",
    "output_loading_info",
    "local_files_only",
    "low_cpu_mem_usage",
    "attn_implementation",
    "config",
}


@contextmanager
def models_on_meta(config_path: str | None = None) -> Iterator[None]:
    """Within it, model loaders build on the meta device; `config_path` (a config.json or its folder) stands
    in for the recipe model's config, for planning a model whose files are not at hand."""
    token = _META.set({"config_path": config_path})
    try:
        yield
    finally:
        _META.reset(token)


def active() -> bool:
    return _META.get() is not None


def config_path() -> str | None:
    state = _META.get()
    if state is None or state["config_path"] is None:
        return None
    path = Path(state["config_path"])
    return str(path.parent if path.is_file() else path)


def is_model_loader(loader: Any) -> bool:
    """`loader` is the `from_pretrained` of a transformers model class (not of a config or tokenizer)."""
    owner = getattr(loader, "__self__", None)
    return (
        isinstance(owner, type)
        and hasattr(owner, "from_config")
        and getattr(loader, "__name__", "") == ("from_pretrained")
    )


def is_config_loader(loader: Any) -> bool:
    owner = getattr(loader, "__self__", None)
    return isinstance(owner, type) and owner.__name__.endswith("Config")


def build_on_meta(loader: Any, name: str, kwargs: dict[str, Any], load_config) -> Any:
    """What `loader(name, **kwargs)` would return, built on the meta device from the config."""
    import torch

    owner = loader.__self__
    config = kwargs.get("config")
    config_kwargs = {k: v for k, v in kwargs.items() if k not in LOADING_KEYS}
    if config is None:
        config = load_config(**config_kwargs)
    else:
        for key, value in config_kwargs.items():
            setattr(config, key, value)
    extra = {"trust_remote_code": True} if kwargs.get("trust_remote_code") else {}
    with torch.device("meta"):
        model = owner.from_config(config, **extra)
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if isinstance(dtype, torch.dtype):
        model.to(dtype)
    model.adapt_quantization_config = kwargs.get("quantization_config")
    if kwargs.get("output_loading_info"):
        return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
    return model


def check_model_config(file: Path) -> None:
    """A transformers model config: JSON holding a `model_type` that transformers knows."""
    import json

    from transformers import CONFIG_MAPPING

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"--model-config: '{file}' is not readable JSON ({exc})") from None
    kind = data.get("model_type") if isinstance(data, dict) else None
    if kind not in CONFIG_MAPPING:
        what = f"its model_type {kind!r} is not one transformers knows" if kind else "it has no model_type"
        raise DataError(f"--model-config: '{file}' is not a transformers model config: {what}")


def made_up_labels(run, ids) -> dict[str, Any]:
    """Labels for a batch made up without data, by the head's task type."""
    import torch

    rows, length = ids.shape
    per_row = torch.zeros(rows, dtype=torch.long)
    problem = getattr(getattr(run.model, "config", None), "problem_type", None)
    if problem in ("multi_label_classification", "regression"):
        return {"labels": torch.zeros(rows, run.model.config.num_labels)}
    return {
        "CAUSAL_LM": {"labels": ids.clone()},
        "TOKEN_CLS": {"labels": torch.zeros(rows, length, dtype=torch.long)},
        "QUESTION_ANS": {"start_positions": per_row, "end_positions": per_row},
    }.get(run.task_type, {"labels": per_row})
