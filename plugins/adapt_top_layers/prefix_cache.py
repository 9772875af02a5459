"""The frozen prefix's output, computed once per example and served again instead of running the prefix.

Below the first trained block everything is frozen and deterministic (evaluation mode: no dropout), so the
hidden states entering that block depend only on the example. The first time an example is seen they are
stored, without padding, in a memory-mapped file; when every example of a later batch is stored, the frozen
blocks pass their input through and the first trained block receives the stored states instead. An example
is known by its real (unpadded) token ids, so it is found whatever batch it lands in and however that batch
is padded: at real positions the trained blocks see what the prefix computed (padding is masked out of
attention), bit for bit with float32 storage (a prefix run at another padding may differ in the last bits:
attention sums over more keys in another order).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch

KEY_INPUTS = ("input_ids", "token_type_ids")


class StateStore:
    """Unpadded hidden states of examples, one row per token, in a file mapped into memory (rows of a new
    example are appended; `index` maps an example's key to its first row and row count)."""

    def __init__(self, path: Path, capacity: int, hidden: int, dtype: torch.dtype):
        self.path, self.capacity, self.hidden, self.dtype = path, capacity, hidden, dtype
        path.parent.mkdir(parents=True, exist_ok=True)
        size = capacity * hidden
        with open(path, "ab") as handle:  # "ab": an existing file (a resumed run's) keeps its rows
            handle.truncate(size * torch.empty(0, dtype=dtype).element_size())  # sparse until written
        self.rows = torch.from_file(str(path), shared=True, size=size, dtype=dtype).view(capacity, hidden)
        self.index: dict[bytes, tuple[int, int]] = {}
        self.used = 0

    def add(self, key: bytes, states: torch.Tensor) -> bool:
        n = states.shape[0]
        if self.used + n > self.capacity:
            return False
        self.rows[self.used : self.used + n] = states
        self.index[key] = (self.used, n)
        self.used += n
        return True

    def gather(self, keys: list[bytes]) -> torch.Tensor:
        """The rows of `keys`' examples, concatenated in that order (one indexing operation)."""
        spans = torch.tensor([self.index[key] for key in keys], dtype=torch.long)
        starts, counts = spans[:, 0], spans[:, 1]
        first_of_each = torch.cumsum(counts, 0) - counts  # where each example begins in the output
        offsets = torch.repeat_interleave(starts - first_of_each, counts)
        return self.rows[torch.arange(int(counts.sum())) + offsets]

    @property
    def bytes(self) -> int:
        return self.used * self.hidden * self.rows.element_size()

    def export_index(self) -> dict[str, torch.Tensor]:
        keys = list(self.index)
        blob = b"".join(keys)
        return {
            "keys": torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8),
            "key_lengths": torch.tensor([len(k) for k in keys], dtype=torch.long),
            "spans": torch.tensor([self.index[k] for k in keys], dtype=torch.long).reshape(-1, 2),
        }

    def import_index(self, tensors: dict[str, torch.Tensor], used: int) -> None:
        blob, start = tensors["keys"].numpy().tobytes(), 0
        for length, (row, n) in zip(tensors["key_lengths"].tolist(), tensors["spans"].tolist(), strict=True):
            self.index[blob[start : start + length]] = (row, n)
            start += length
        self.used = used

    def close(self, delete: bool) -> None:
        del self.rows
        if delete:
            self.path.unlink(missing_ok=True)


class PrefixCache:
    """Serves the input of block `first_trained` of `blocks` from a `StateStore` (created lazily, when the
    first states arrive and their width is known)."""

    def __init__(self, backbone: torch.nn.Module, blocks, first_trained: int, path: Path, capacity: int, dtype):
        self.backbone, self.blocks, self.first = backbone, blocks, first_trained
        self.path, self.capacity, self.dtype = path, capacity, dtype
        self.store: StateStore | None = None
        self.signature = inspect.signature(backbone.forward)
        self.serving: tuple[list[bytes], torch.Tensor] | None = None
        self.storing: tuple[list[bytes], torch.Tensor] | None = None
        self.block_returns_tuple = False
        self.hits = self.misses = self.unstored = 0
        self.handles: list[Any] = []

    # --- installation -------------------------------------------------------------------------------

    def install(self) -> None:
        self.handles = [
            self.backbone.register_forward_pre_hook(self._on_backbone_call, with_kwargs=True),
            self.backbone.register_forward_hook(self._after_backbone_call),
            self.blocks[self.first - 1].register_forward_hook(self._store),
            self.blocks[self.first].register_forward_pre_hook(self._serve, with_kwargs=True),
        ]
        for block in list(self.blocks)[: self.first]:
            block.forward = functools.partial(_pass_through_when_serving, self, block)

    def uninstall(self, delete: bool) -> None:
        for handle in self.handles:
            handle.remove()
        for block in list(self.blocks)[: self.first]:
            block.__dict__.pop("forward", None)
        if self.store is not None:
            self.store.close(delete)
            self.store = None

    # --- one forward pass -----------------------------------------------------------------------------

    def _on_backbone_call(self, module, args, kwargs) -> None:
        self.serving = self.storing = None
        try:
            bound = self.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return
        ids = bound.get("input_ids")
        if ids is None:  # embeddings passed in directly: nothing to key on
            return
        mask = bound.get("attention_mask")
        real = (mask if mask is not None else torch.ones_like(ids)).bool()
        keys = _keys({name: bound.get(name) for name in KEY_INPUTS}, real)
        if self.store is not None and all(key in self.store.index for key in keys):
            self.serving = (keys, real)
            self.hits += len(keys)
        else:
            self.storing = (keys, real)
            self.misses += len(keys)

    def _after_backbone_call(self, module, args, output) -> None:
        self.serving = self.storing = None

    def _store(self, module, args, output) -> None:
        if self.storing is None:
            return
        self.block_returns_tuple = isinstance(output, tuple)
        hidden = output[0] if isinstance(output, tuple) else output
        keys, real = self.storing
        if self.store is None:
            self.store = StateStore(self.path, self.capacity, hidden.shape[-1], self.dtype)
        for i, key in enumerate(keys):
            if key in self.store.index:
                continue
            rows = hidden[i][real[i]].detach().to("cpu", self.dtype)
            if not torch.isfinite(rows).all() or not self.store.add(key, rows):  # out of range for the dtype
                self.unstored += 1

    def _serve(self, module, args, kwargs):
        if self.serving is None:
            return None
        keys, real = self.serving
        incoming = args[0] if args else kwargs["hidden_states"]
        rows = self.store.gather(keys)  # every real token of the batch, example after example
        states = torch.zeros_like(incoming)
        states[real.to(incoming.device)] = rows.to(incoming.device, incoming.dtype)  # fills in that same order
        if args:
            return (states, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": states}

    def stats(self) -> dict[str, Any]:
        store = self.store
        return {
            "examples": len(store.index) if store else 0,
            "mib": round(store.bytes / 2**20, 1) if store else 0.0,
            "dtype": str(self.dtype).removeprefix("torch."),
            "hits": self.hits,
            "misses": self.misses,
            "unstored": self.unstored,
        }


def _pass_through_when_serving(prefix_cache: PrefixCache, block: torch.nn.Module, /, *args: Any, **kwargs: Any):
    if prefix_cache.serving is None:
        return type(block).forward(block, *args, **kwargs)
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden,) if prefix_cache.block_returns_tuple else hidden


def _keys(inputs: dict[str, torch.Tensor | None], real: torch.Tensor) -> list[bytes]:
    parts = [value.cpu() for value in inputs.values() if value is not None]
    real = real.cpu()
    return [b"|".join(p[i][real[i]].numpy().tobytes() for p in parts) for i in range(real.shape[0])]
