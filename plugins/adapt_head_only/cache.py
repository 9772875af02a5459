"""A frozen backbone's outputs, computed once per example and served again instead of running it.

The cache replaces the backbone's `forward` on the instance (the module tree and state-dict keys stay
as they are), so the task model's own forward, head and loss run unchanged. An example is known by its
real (unpadded) token ids, so it is found whatever batch it lands in and however that batch is padded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


KEY_INPUTS = ("input_ids", "token_type_ids")


class FeatureCache:
    def __init__(self, backbone: torch.nn.Module, limit_bytes: int):
        self.backbone = backbone
        self.limit_bytes = limit_bytes
        self.entries: dict[bytes, dict[str, torch.Tensor]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.output_type: type | None = None
        self.per_token: set[str] = set()  # fields with a sequence dimension, stored without padding
        self.exported = 0  # entries already written by `export_new`

    def install(self) -> None:
        self.backbone.forward = self.forward  # an instance attribute shadows the class's forward

    def uninstall(self) -> None:
        self.backbone.__dict__.pop("forward", None)

    def stats(self) -> dict[str, float]:
        return {
            "examples": len(self.entries),
            "mib": round(self.bytes / 2**20, 1),
            "hits": self.hits,
            "misses": self.misses,
        }

    def _keys(self, inputs: dict[str, torch.Tensor], real: torch.Tensor) -> list[bytes]:
        parts = [inputs[name] for name in KEY_INPUTS if inputs.get(name) is not None]
        return [b"|".join(p[i][real[i]].cpu().numpy().tobytes() for p in parts) for i in range(real.shape[0])]

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        import torch

        original = type(self.backbone).forward.__get__(self.backbone)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        if input_ids is None:  # embeddings passed directly: nothing to key on
            return original(**inputs)
        real = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).bool()
        keys = self._keys(inputs, real)
        if self.output_type is not None and all(k in self.entries for k in keys):
            self.hits += len(keys)
            return self._assemble(keys, real)
        self.misses += len(keys)
        was_training = self.backbone.training
        self.backbone.eval()  # features of a frozen backbone: no dropout, so they can be reused
        with torch.no_grad():
            output = original(**inputs)
        self.backbone.train(was_training)
        self._store(keys, real, output)
        return output

    def _fields(self, output: Any, batch: int) -> dict[str, torch.Tensor]:
        import torch

        return {
            name: value
            for name, value in output.items()
            if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == batch
        }

    def _store(self, keys: list[bytes], real: torch.Tensor, output: Any) -> None:
        self.output_type = type(output)
        fields = self._fields(output, len(keys))
        self.per_token = {n for n, v in fields.items() if v.ndim >= 3 and v.shape[1] == real.shape[1]}
        for i, key in enumerate(keys):
            if key in self.entries or self.bytes >= self.limit_bytes:
                continue
            entry = {}
            for name, value in fields.items():
                row = value[i][real[i]] if name in self.per_token else value[i]
                entry[name] = row.detach().to("cpu", copy=True)
                self.bytes += entry[name].numel() * entry[name].element_size()
            self.entries[key] = entry

    def _assemble(self, keys: list[bytes], real: torch.Tensor) -> Any:
        import torch

        device = real.device
        fields = {}
        for name, sample in self.entries[keys[0]].items():
            if name in self.per_token:
                out = torch.zeros((len(keys), real.shape[1], *sample.shape[1:]), dtype=sample.dtype, device=device)
                for i, key in enumerate(keys):
                    out[i][real[i]] = self.entries[key][name].to(device)
            else:
                out = torch.stack([self.entries[key][name] for key in keys]).to(device)
            fields[name] = out
        return self.output_type(**fields)

    # --- persistence, so that a resumed run serves exactly the features the interrupted one had -----------

    def export_new(self) -> dict[str, torch.Tensor]:
        """The entries added since the last export, as flat tensors for a safetensors file."""
        import torch

        keys = list(self.entries)[self.exported :]
        self.exported = len(self.entries)
        blob = b"".join(keys)
        tensors = {
            "keys": torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8),
            "key_lengths": torch.tensor([len(k) for k in keys], dtype=torch.long),
        }
        for i, key in enumerate(keys):
            for name, value in self.entries[key].items():
                tensors[f"{i}.{name}"] = value
        return tensors

    def import_entries(self, tensors: dict[str, torch.Tensor]) -> None:
        fields: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            index, dot, field = name.partition(".")
            if dot:
                fields.setdefault(int(index), {})[field] = value
        blob, start = tensors["keys"].numpy().tobytes(), 0
        for i, length in enumerate(tensors["key_lengths"].tolist()):
            key, start = blob[start : start + length], start + length
            self.entries[key] = fields.get(i, {})
            self.bytes += sum(v.numel() * v.element_size() for v in self.entries[key].values())
        self.exported = len(self.entries)

    def describe(self) -> dict[str, object]:
        """What the cache needs besides its entries to serve them again."""
        kind = self.output_type
        return {
            "output_type": f"{kind.__module__}:{kind.__qualname__}" if kind is not None else "",
            "per_token": sorted(self.per_token),
            "hits": self.hits,
            "misses": self.misses,
        }

    def restore(self, description: dict) -> None:
        import importlib

        if description["output_type"]:
            module, _, name = description["output_type"].partition(":")
            self.output_type = getattr(importlib.import_module(module), name)
        self.per_token = set(description["per_token"])
        self.hits, self.misses = description["hits"], description["misses"]
