"""A guard against NaN and infinite losses, which would otherwise train a model into NaNs and save it.

Each micro-batch's loss terms are checked on the device, without waiting for it: the first step at which
each term was not finite is kept as a tensor and read only at logs, evaluations and checkpoints, so
nothing non-finite is ever checkpointed or saved. `train.nonfinite = "skip"` must decide before the
optimizer steps, so it reads one flag per optimizer step.
"""

from __future__ import annotations

import torch

from adapt.errors import AdaptError


class NonFiniteLoss(AdaptError):
    """Training stopped on a loss that was not finite."""


class NonFiniteGuard:
    def __init__(self, mode: str, max_skips: int, device: torch.device):
        self.mode = mode
        self.max_skips = max_skips
        self.device = device
        self.names: tuple[str, ...] = ()
        self.first_bad: torch.Tensor | None = None  # per term: first step (1-based) not finite, or -1
        self.step_bad = torch.zeros((), dtype=torch.bool, device=device)
        self.skipped = 0
        self.consecutive = 0
        self.last_checkpoint: str | None = None

    def observe(self, step: int, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Record one micro-batch of optimizer step `step` (1-based)."""
        names = ("loss", *terms)
        if names != self.names:  # the first micro-batch, or plugins changed their terms
            self.names = names
            self.first_bad = torch.full((len(names),), -1, dtype=torch.long, device=self.device)
        values = torch.stack([loss.detach().float(), *(t.detach().float() for t in terms.values())])
        bad = ~torch.isfinite(values)
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        if self.mode == "skip":
            self.step_bad |= bad.any()

    def drop_step(self, step: int) -> bool:
        """In "skip" mode, whether optimizer step `step` had a non-finite loss and must not update the weights."""
        if self.mode != "skip":
            return False
        bad = bool(self.step_bad)
        self.step_bad.zero_()
        if not bad:
            self.consecutive = 0
            return False
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive > self.max_skips:
            raise NonFiniteLoss(
                f"train.nonfinite: the loss was not finite in {self.consecutive} optimizer steps in a row (up to "
                f"step {step}), more than train.max_nonfinite_skips = {self.max_skips}; "
                f"{self._advice()}"
            )
        self.first_bad.fill_(-1)  # skipped steps are counted, not reported
        return True

    def check(self) -> None:
        """Stop ("stop" mode) when any loss term was not finite since the start; reads the device once."""
        if self.first_bad is None or self.mode != "stop":
            return
        first = self.first_bad.tolist()
        bad = [(step, name) for step, name in zip(first, self.names, strict=True) if step >= 0]
        if not bad:
            return
        step = min(s for s, _ in bad)
        which = ", ".join(f"'{name}'" for s, name in bad if s == step)
        raise NonFiniteLoss(
            f"train.nonfinite: the loss was not finite at optimizer step {step} (terms: {which}), so training "
            f"stopped before saving anything from that step on; {self._advice()}"
        )

    def _advice(self) -> str:
        saved = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint
            else "no checkpoint was written before it"
        )
        return (
            f"{saved}. Lower train.learning_rate, keep train.max_grad_norm set, or set train.nonfinite = "
            '"skip" to drop such steps'
        )

    def state(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load(self, state: dict[str, int]) -> None:
        self.skipped, self.consecutive = state["skipped"], state["consecutive"]
