"""The output of a frozen prefix of the model, computed once per example and served again instead of running it.

A method that freezes the embeddings and the transformer blocks below block `first` (top-layers; head-only, where
`first` is past the last block) keeps that prefix in evaluation mode, so the hidden states leaving it depend only
on the example. The first time an example is seen they are stored, without padding, in a memory-mapped file; when
every example of a later batch is stored, the frozen blocks pass their input through and the last of them returns
the stored states instead. An example is known by its real (unpadded) token ids, so it is found whatever batch it
lands in and however that batch is padded: at real positions the blocks after the prefix see what the prefix
computed (padding is masked out of attention), bit for bit with float32 storage (a prefix run at another padding
may differ in the last bits: attention sums over more keys in another order). Where the prefix ends at a top
block trimmed to the first token's row (`task.trim_top_block`: the classifier reads nothing else), that row is
all there is to store: one row per example instead of one per token.

    cache = serve_frozen_prefix(run, first=len(blocks), dtype="float16", owner="head-only")

The states file lives in the run directory; a checkpoint holds only the index of what it stores
(`PrefixCache.checkpoint`), and a resumed run reopens the file and serves exactly the states the interrupted
one had (`PrefixCache.resume`).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapt.hookspecs import hookimpl
from adapt.speed.state_store import StateStore
from adapt.speed.trim import is_trimmed_block, observed, reads_first_row_only

if TYPE_CHECKING:
    import torch

    from adapt.run.context import Run

KEY_INPUTS = ("input_ids", "token_type_ids")
DTYPES = ("float32", "float16", "bfloat16")


class PrefixCache:
    """Serves the output of `blocks[first - 1]` (the last frozen block) from a `StateStore`, created lazily when
    the first states arrive and their width is known. `capacity` is in rows (tokens; examples where only the
    first token's row is stored); `max_bytes` caps the file."""

    def __init__(
        self,
        backbone: torch.nn.Module,
        blocks,
        first: int,
        path: Path,
        capacity: int,
        dtype: torch.dtype,
        max_bytes: int | None = None,
    ):
        if not 1 <= first <= len(blocks):
            raise ValueError(f"the frozen prefix must end at one of the {len(blocks)} blocks, not before block {first}")
        self.backbone, self.blocks, self.first = backbone, blocks, first
        self.path, self.capacity, self.dtype, self.max_bytes = path, capacity, dtype, max_bytes
        self.store: StateStore | None = None
        self.first_row = _stores_first_rows(blocks, first)
        self.signature = inspect.signature(backbone.forward)
        self.serving: tuple[list[bytes], torch.Tensor] | None = None
        self.storing: tuple[list[bytes], torch.Tensor] | None = None
        self.block_returns_tuple = False
        self.hits = self.misses = self.unstored = 0
        self.handles: list[Any] = []
        self.compiled: dict[torch.nn.Module, Any] = {}  # the prefix blocks' compiled code, while the cache is on
        self.forwards: dict[torch.nn.Module, Any] = {}  # forwards set on the prefix blocks before the cache's own

    # --- installation -------------------------------------------------------------------------------

    def install(self) -> None:
        boundary = functools.partial(PrefixCache._at_boundary, self)
        if self.first_row:
            reads_first_row_only(boundary)  # the trimmed top block stays trimmed under it
        self.handles = [
            self.backbone.register_forward_pre_hook(self._on_backbone_call, with_kwargs=True),
            self.backbone.register_forward_hook(self._after_backbone_call),
            self.blocks[self.first - 1].register_forward_hook(boundary),
        ]
        for block in list(self.blocks)[: self.first]:
            # the block's forward as it is (one set on the block itself, adapt.speed.trim's, too) runs when not serving
            self.forwards[block] = block.__dict__.get("forward")
            block.forward = functools.partial(_pass_through_when_serving, self, block.forward)
            # train.compile: the cache does a frozen block's work, and its Python would only break the graph
            self.compiled[block] = block.__dict__.pop("_compiled_call_impl", None)

    def uninstall(self, delete: bool) -> None:
        """Restore the model; `delete` the states file (keep it for a run that will resume)."""
        for handle in self.handles:
            handle.remove()
        for block in list(self.blocks)[: self.first]:
            block.__dict__.pop("forward", None)
            if self.forwards.get(block) is not None:
                block.forward = self.forwards[block]
            if self.compiled.get(block) is not None:
                block._compiled_call_impl = self.compiled[block]
        self.forwards, self.compiled = {}, {}
        if self.store is not None:
            self.store.close(delete)
            self.store = None

    # --- one forward pass -----------------------------------------------------------------------------

    def _on_backbone_call(self, module, args, kwargs) -> None:
        self.serving = self.storing = None
        if self.first_row and observed(self.blocks[-1]):
            return  # a hook reads every row of the top block (the forgetting probe): it runs whole, uncached
        try:
            bound = self.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return
        ids = bound.get("input_ids")
        if ids is None:  # embeddings passed in directly: nothing to key on
            return
        import torch

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

    def _at_boundary(self, module, args, output):
        """The last frozen block's output: replaced by the stored states when serving, stored when not."""
        if self.serving is not None:
            return self._serve(output)
        if self.storing is not None:
            self._store(output)
        return None

    def _store(self, output) -> None:
        self.block_returns_tuple = isinstance(output, tuple)
        hidden = output[0] if isinstance(output, tuple) else output
        keys, real = self.storing
        if self.store is None:
            self.store = self._open(hidden.shape[-1])
        for i, key in enumerate(keys):
            if key in self.store.index:
                continue
            rows = (hidden[i][:1] if self.first_row else hidden[i][real[i]]).detach().to("cpu", self.dtype)
            if not rows.isfinite().all() or not self.store.add(key, rows):  # out of range for the dtype, or full
                self.unstored += 1

    def _open(self, hidden: int) -> StateStore:
        capacity = self.capacity  # rows
        if self.max_bytes is not None:
            capacity = min(capacity, self.max_bytes // (hidden * self.dtype.itemsize))
        return StateStore(self.path, capacity, hidden, self.dtype)

    def _serve(self, output):
        import torch

        keys, real = self.serving
        incoming = output[0] if isinstance(output, tuple) else output  # the embeddings, passed through
        rows = self.store.gather(keys)  # every real token of the batch (or first token), example after example
        if self.first_row:
            states = rows.to(incoming.device, incoming.dtype).unsqueeze(1)  # what the trimmed top block returns
        else:
            states = torch.zeros_like(incoming)
            states[real.to(incoming.device)] = rows.to(incoming.device, incoming.dtype)  # fills in that same order
        return (states, *output[1:]) if isinstance(output, tuple) else states

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

    # --- checkpoints ----------------------------------------------------------------------------------

    def checkpoint(self, run: Run, owner: str) -> dict[str, Any] | None:
        """Write the index of the stored states beside the checkpoint being written (the rows are in the states
        file already: a shared mapping); return what `resume` needs (for `adapt_checkpoint_state`). A resumed run
        then serves the interrupted one's states, not states recomputed in other batches (last bits differ)."""
        if self.store is None:
            return None
        from adapt.model.weights import save_tensors

        save_tensors(self.store.export_index(), _index_file(run, owner, run.step))
        state = {"step": run.step, "used": self.store.used, "hidden": self.store.hidden, **self.stats()}
        return {**state, "first_row": self.first_row}

    def resume(self, run: Run, owner: str, state: dict[str, Any]) -> None:
        """Serve what the checkpoint `state` (from `checkpoint`) had stored, from the interrupted run's file."""
        if not self.path.is_file() or state.get("first_row", False) != self.first_row:
            return  # the file is gone, or holds rows of another layout: the resumed run stores the states afresh
        from safetensors.torch import load_file

        self.store = self._open(state["hidden"])
        self.store.import_index(load_file(str(_index_file(run, owner, state["step"]))), state["used"])
        self.hits, self.misses, self.unstored = state["hits"], state["misses"], state["unstored"]


def serve_frozen_prefix(
    run: Run, first: int, dtype: str, owner: str, max_bytes: int | None = None
) -> PrefixCache | None:
    """Install a `PrefixCache` on `run.unwrapped_model` for the prefix that ends before block `first` (the number
    of frozen blocks; past the last block when everything up to the head is frozen), storing `dtype` ("float32",
    "float16", "bfloat16") in `run.output_dir / "prefix-cache"`. Call it in `adapt_on_train_start`, after the
    method has frozen the prefix and pinned it in evaluation mode. Returns None, and caches nothing, where the
    model has no block stack or backbone to hook, `first` is 0, or a parameter of the prefix trains (another
    method trains there, so its output changes)."""
    import torch

    from adapt.model.modeling import find_blocks

    model = run.unwrapped_model
    try:
        name, blocks = find_blocks(model)
    except ValueError:
        return None
    backbone = _backbone(model, name)
    if backbone is None or not 1 <= first <= len(blocks):
        return None
    if any(p.requires_grad for p in _prefix_parameters(backbone, blocks, first)):
        return None
    loose = _unpinned(model, _prefix_modules(backbone, blocks, first))
    if loose:
        from adapt.errors import AdaptError

        raise AdaptError(
            f"{owner}: the frozen prefix must be pinned in evaluation mode before its output is cached "
            f"(adapt.keep_in_eval in adapt_transform_model), and {', '.join(loose[:3])} "
            f"{'is' if len(loose) == 1 else 'are'} not: dropout there would be stored in the cache and replayed on "
            "every epoch"
        )
    if run.compiled is not None and run.compiled["scope"] == "model":
        run.note(
            f'{owner}: no frozen-prefix cache under train.compile_scope = "model" (its hooks would break the '
            'compiled graph); compile_scope = "blocks" keeps both'
        )
        return None
    if _stores_first_rows(blocks, first):
        capacity = sum(len(split) for split in run.encoded.values())  # one row per example
    else:
        capacity = sum(_token_count(split) for split in run.encoded.values())
    path = run.output_dir / "prefix-cache" / f"{owner}-p{run.accelerator.process_index}.bin"
    cache = PrefixCache(backbone, blocks, first, path, capacity, getattr(torch, dtype), max_bytes)
    cache.install()
    return cache


class FrozenPrefixCaching:
    """Mix-in for a method plugin that serves its frozen prefix from a `PrefixCache`: it implements the hooks that
    carry the cache through a run. Call `self.start_prefix_cache(...)` in `adapt_on_train_start`, once the prefix is
    frozen and pinned in evaluation mode; the class provides `adapt_checkpoint_state` (the index of what is stored),
    `adapt_load_checkpoint_state` (a resumed run serves the interrupted one's states), `adapt_on_train_end` (the
    states file is deleted) and `adapt_on_train_error` (the file stays, for `--resume`). `self.prefix_cache` is the
    cache, None while there is none. A subclass overriding one of these hooks calls the mix-in's from its own."""

    cache_owner = ""
    """Names the states file and the checkpoint index: the method's name, e.g. "top-layers"."""

    prefix_cache: PrefixCache | None = None
    _resumed_cache: dict[str, Any] | None = None

    def start_prefix_cache(self, run: Run, first: int, dtype: str, max_bytes: int | None = None) -> PrefixCache | None:
        """`serve_frozen_prefix(run, first, dtype, self.cache_owner, max_bytes)`, then, in a resumed run, serve what
        the checkpoint had stored."""
        self.prefix_cache = serve_frozen_prefix(run, first, dtype, self.cache_owner, max_bytes)
        if self.prefix_cache is not None and self._resumed_cache is not None:
            self.prefix_cache.resume(run, self.cache_owner, self._resumed_cache)
        return self.prefix_cache

    @hookimpl
    def adapt_checkpoint_state(self, run: Run) -> dict[str, Any] | None:
        return self.prefix_cache.checkpoint(run, self.cache_owner) if self.prefix_cache is not None else None

    @hookimpl
    def adapt_load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self._resumed_cache = state  # the cache itself is built in adapt_on_train_start

    @hookimpl
    def adapt_on_train_end(self) -> None:
        self._close_prefix_cache(delete=True)

    @hookimpl
    def adapt_on_train_error(self) -> None:
        self._close_prefix_cache(delete=False)  # a resumed run reuses the states

    def _close_prefix_cache(self, delete: bool) -> None:
        self._resumed_cache = None  # the next run of this plugin object starts afresh
        if self.prefix_cache is not None:
            self.prefix_cache.uninstall(delete=delete)
            self.prefix_cache = None


def keep_in_eval(module: torch.nn.Module) -> None:
    """Put `module` in evaluation mode and keep it there through `model.train()` (no dropout: a frozen part
    whose output must not change from one pass to the next)."""
    module.train = functools.partial(_always_eval, module)
    module.train()


def _always_eval(module, mode: bool = True):
    import torch

    return torch.nn.Module.train(module, False)


def _prefix_parameters(backbone, blocks, first: int) -> list:
    """The parameters the prefix's output depends on: the backbone's before its first block (the embeddings)
    and those of the blocks below `first`."""
    in_blocks = {id(p) for p in blocks.parameters()}
    before = []
    for param in backbone.parameters():
        if id(param) in in_blocks:
            break
        before.append(param)
    return before + [param for block in list(blocks)[:first] for param in block.parameters()]


def _stores_first_rows(blocks, first: int) -> bool:
    """The prefix ends at a top block trimmed to the first token's row (adapt.speed.trim): only that row is stored."""
    return first == len(blocks) and is_trimmed_block(blocks[-1])


def _prefix_modules(backbone, blocks, first: int) -> list:
    """The backbone's children before the one holding the block stack (the embeddings), and the blocks below
    `first`."""
    in_blocks = {id(m) for m in blocks.modules()}
    before = []
    for child in backbone.children():
        if any(id(m) in in_blocks for m in child.modules()):
            break
        before.append(child)
    return before + list(blocks)[:first]


def _unpinned(model, modules: list) -> list[str]:
    """Names of the `modules` that no `keep_in_eval` on them or on a module above them keeps in evaluation mode."""
    names = {id(m): name for name, m in model.named_modules()}
    pinned = set()
    for module in model.modules():
        train = module.__dict__.get("train")
        if isinstance(train, functools.partial) and train.func is _always_eval:
            pinned.update(id(m) for m in module.modules())
    return [names.get(id(m), type(m).__name__) for m in modules if id(m) not in pinned]


def _backbone(model, blocks_name: str):
    """The module above the block stack that takes `input_ids` and `attention_mask` (BertModel, LlamaModel)."""
    parts = blocks_name.split(".")
    for end in range(len(parts) - 1, -1, -1):
        module = model.get_submodule(".".join(parts[:end]))
        try:
            parameters = inspect.signature(module.forward).parameters
        except (TypeError, ValueError):
            continue
        if "input_ids" in parameters and "attention_mask" in parameters:
            return module
    return None


def _index_file(run: Run, owner: str, step: int) -> Path:
    return run.checkpoints_dir / owner / f"prefix-index-p{run.accelerator.process_index}-step{step}.safetensors"


def _token_count(split) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(pc.list_value_length(split.with_format("arrow")["input_ids"])).as_py() or 0)


def _pass_through_when_serving(prefix_cache: PrefixCache, forward, /, *args: Any, **kwargs: Any):
    if prefix_cache.serving is None:
        return forward(*args, **kwargs)
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden,) if prefix_cache.block_returns_tuple else hidden


def _keys(inputs: dict[str, torch.Tensor | None], real: torch.Tensor) -> list[bytes]:
    parts = [value.cpu() for value in inputs.values() if value is not None]
    real = real.cpu()
    return [b"|".join(p[i][real[i]].numpy().tobytes() for p in parts) for i in range(real.shape[0])]
