"""States of a frozen prefix, one set per example, stored without padding in a memory-mapped file and found by
the example's token ids (for adapt.speed.prefix_cache)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class StateStore:
    """Unpadded hidden states of examples, one row per token (or the first token's only), in a file mapped into
    memory (rows of a new example are appended; `index` maps an example's key to its first row and row count)."""

    def __init__(self, path: Path, capacity: int, hidden: int, dtype: torch.dtype):
        import torch

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
        import torch

        spans = torch.tensor([self.index[key] for key in keys], dtype=torch.long)
        starts, counts = spans[:, 0], spans[:, 1]
        first_of_each = torch.cumsum(counts, 0) - counts  # where each example begins in the output
        offsets = torch.repeat_interleave(starts - first_of_each, counts)
        return self.rows[torch.arange(int(counts.sum())) + offsets]

    @property
    def bytes(self) -> int:
        return self.used * self.hidden * self.rows.element_size()

    def export_index(self) -> dict[str, torch.Tensor]:
        import torch

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
