"""Models, tokenizers and configs from the local Hugging Face cache first, so a hub id works offline once cached.

With the hub unreachable and HF_HUB_OFFLINE unset, the network path costs minutes of retries, so it is only the
fallback for what the cache lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from adapt.errors import DataError
from adapt.plan import meta_models

T = TypeVar("T")


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def from_pretrained_cached(loader: Callable[..., T], name: str, *, key: str, **kwargs: Any) -> T:
    """`loader(name, **kwargs)` (any `from_pretrained`), trying the local cache before the network. Inside
    `meta_models.models_on_meta()` (`adapt plan`) a model is built on the meta device from its config instead."""
    if meta_models.active():
        if meta_models.is_config_loader(loader) and meta_models.config_path():
            name = meta_models.config_path()
        elif meta_models.is_model_loader(loader):
            from transformers import AutoConfig

            def load_config(**config_kwargs):
                options = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
                return from_pretrained_cached(AutoConfig.from_pretrained, name, key=key, **options, **config_kwargs)

            return meta_models.build_on_meta(loader, name, kwargs, load_config)
    if Path(name).is_dir():
        return loader(name, **kwargs)
    try:
        return loader(name, local_files_only=True, **kwargs)
    except OSError as cached_error:
        if hub_offline():
            raise DataError(
                f"{key}: '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
                f"({cached_error}); download it once with network access, or use a local folder"
            ) from None
    try:
        return loader(name, **kwargs)
    except OSError as exc:
        raise DataError(f"{key}: cannot load '{name}' from the cache or the hub: {exc}") from None
