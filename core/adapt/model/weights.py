"""Saving and restoring weights with safetensors (never pickle), atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from adapt.io import atomic_dir, atomic_file

if TYPE_CHECKING:
    import torch


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write `tensors` to a .safetensors file through a temporary file and a rename."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    return Path(path)


def load_tensors_into(model: torch.nn.Module, *files: str | Path) -> list[str]:
    """Copy the tensors of `files` into `model`'s parameters and buffers of the same names.

    Every stored name must exist in the model; returns the names loaded. Parameters the files do not
    mention are left as they are (a head-only artifact holds only the head).
    """

    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ValueError(f"{len(unknown)} saved tensors have no place in {type(model).__name__}: {shown}")
    model.load_state_dict(state, strict=False)
    return sorted(state)


def save_model_folder(run, folder: str | Path) -> None:
    """The whole trained model as a standalone Hugging Face folder (config, safetensors, tokenizer)."""
    with atomic_dir(folder) as tmp:
        run.unwrapped_model.save_pretrained(tmp)
        run.tokenizer.save_pretrained(tmp)


def load_model_folder(run, folder: str | Path) -> None:
    """Load the weights of a `save_model_folder` folder into `run.model`."""
    load_tensors_into(run.model, *sorted(Path(folder).glob("*.safetensors")))
