"""Batch samplers that keep padding low, the first-order cost of training on short texts."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence


class LengthGroupedBatches:
    """Training batches of similar length, still random.

    Each epoch: shuffle all indices, cut them into pools of `pool` batches, sort each pool by length,
    cut it into batches, then shuffle the batches. With `group_by_length=False` it is a plain shuffle.
    Either way the batch holding the longest example goes first (swapped with the first), as HF Trainer's
    length grouping does: a batch too big for memory fails at the first step rather than hours in, and the
    memory a run needs is reached at once (freed memory is then reused by the smaller batches instead of the
    heap growing through the epoch as longer batches turn up).
    Deterministic for a given seed and epoch (`set_epoch`), so every process draws the same batches.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        pool: int = 64,
        group_by_length: bool = True,
    ):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.pool = pool
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if not self.group_by_length:
            batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        else:
            span = self.batch_size * self.pool
            batches = []
            for start in range(0, len(order), span):
                pool = sorted(order[start : start + span], key=self.lengths.__getitem__, reverse=True)
                batches.extend(pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size))
            rng.shuffle(batches)
        if batches:
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
            batches[0], batches[longest] = batches[longest], batches[0]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches: longest first, so the peak memory shows up in the first batch."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def shard_batches(batches: list[list[int]], rank: int, world: int) -> tuple[list[list[int]], list[bool]]:
    """This process's share of `batches` (every `world`-th), and whether each batch counts.

    Every process gets the same number of batches, so sharded models (FSDP) run their forward passes in
    lockstep: a process with one batch fewer repeats its first batch, marked as not counted.
    """
    mine = batches[rank::world]
    rounds = -(-len(batches) // world)
    filler = [(mine or batches)[0]] * (rounds - len(mine)) if rounds > len(mine) else []
    return mine + filler, [True] * len(mine) + [False] * len(filler)


def padding_efficiency(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Real tokens over padded tokens (1.0 means no padding)."""
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches if batch)
    return real / padded if padded else 1.0
