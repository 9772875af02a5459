"""Gradual unfreezing with discriminative learning rates (ULMFiT, Howard & Ruder 2018).

Layer groups, top to bottom: the head (with whatever sits between the blocks and the head, such as a
pooler or a final norm), then each transformer block, then the embeddings. Training starts with the
head alone; every `every` epochs (or steps) the next group down is unfrozen. Group k's learning rate
is the recipe's divided by `lr_decay ** k`. Every group is in the optimizer from the start, at lr 0
while frozen, so the optimizer state and the schedule stay consistent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from adapt import (
    Capability,
    PluginInfo,
    Run,
    Table,
    decay_groups,
    find_blocks,
    hookimpl,
    load_model_folder,
    save_model_folder,
)

ARTIFACT_DIR = "model"


class GradualUnfreezingTable(Table):
    every: int = Field(default=1, ge=1, description="unfreeze the next group every this many units")
    unit: Literal["epoch", "step"] = "epoch"
    """What `every` counts: "epoch"s or optimizer "step"s."""
    lr_decay: float = Field(default=2.6, ge=1)
    """ULMFiT's factor: each group down trains at the lr of the group above divided by this."""


def layer_groups(run: Run) -> list[list[str]]:
    """Parameter names per group, top (head) to bottom (embeddings)."""
    model = run.unwrapped_model
    prefix, blocks = find_blocks(model)
    names = [n for n, _ in model.named_parameters()]
    block_groups = [[n for n in names if n.startswith(f"{prefix}.{i}.")] for i in reversed(range(len(blocks)))]
    in_blocks = {n for group in block_groups for n in group}
    first_block = names.index(block_groups[-1][0])
    heads = run.head_prefixes
    top = [n for i, n in enumerate(names) if n not in in_blocks and (i > first_block or n.startswith(heads))]
    bottom = [n for i, n in enumerate(names) if n not in in_blocks and i < first_block and not n.startswith(heads)]
    return [group for group in (top, *block_groups, bottom) if group]


class GradualUnfreezing:
    """One instance per run: it holds the groups' learning rates while they wait."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.target_lrs: list[float] = []  # per optimizer group
        self.level: list[int] = []  # layer group of each optimizer group
        self.unfrozen = 0
        self.unfrozen_at: list[int] = []

    @hookimpl
    def adapt_plugin_info(self) -> PluginInfo:
        return PluginInfo(
            kind="method",
            table=GradualUnfreezingTable,
            summary="ULMFiT: unfreeze one layer group at a time from the top, discriminative learning rates",
            provides=(Capability.TRAINS_PRETRAINED_WEIGHTS,),
            conflicts={
                "lora": "LoRA keeps the base frozen; gradual unfreezing trains it",
                "adapters": "adapters keep the base frozen; gradual unfreezing trains it",
                "int8": "8-bit weights cannot be trained; gradual unfreezing trains the base",
            },
        )

    @hookimpl
    def adapt_transform_model(self, run: Run) -> None:
        self.groups = layer_groups(run)
        # a memory plan wants the peak: the last stage, every group unfrozen (if the run gets that far)
        self._set_trainable(run, len(self.groups) if run.planning else 1)

    def _set_trainable(self, run: Run, count: int) -> None:
        trainable = {n for group in self.groups[:count] for n in group}
        for name, param in run.unwrapped_model.named_parameters():
            param.requires_grad_(name in trainable)
        self.unfrozen = count

    @hookimpl
    def adapt_param_groups(self, run: Run) -> list[dict[str, Any]]:
        table = run.table(GradualUnfreezingTable)
        params = dict(run.unwrapped_model.named_parameters())
        optimizer_groups = []
        for level, names in enumerate(self.groups):
            lr = run.recipe.train.learning_rate / table.lr_decay**level
            for group in decay_groups((params[n] for n in names), prefix=f"group{level}-", lr=lr):
                optimizer_groups.append(group)
                self.level.append(level)
                self.target_lrs.append(lr)
        return optimizer_groups

    @hookimpl
    def adapt_on_train_start(self, run: Run) -> None:
        if run.resumed_from is None:  # a resumed run's learning rates come back with the optimizer and scheduler
            self.unfrozen_at = [0]
            self._apply_lrs(run)

    @hookimpl
    def adapt_checkpoint_state(self) -> dict[str, Any]:
        return {"unfrozen": self.unfrozen, "unfrozen_at": self.unfrozen_at}

    @hookimpl
    def adapt_load_checkpoint_state(self, run: Run, state: dict[str, Any]) -> None:
        self._set_trainable(run, state["unfrozen"])
        self.unfrozen_at = list(state["unfrozen_at"])

    def _apply_lrs(self, run: Run) -> None:
        """Frozen groups get base lr 0 in the scheduler, so warmup and decay leave them at 0; a group
        unfrozen now starts at once at its own rate times the schedule's current factor."""
        factor = run.optimizer.param_groups[0]["lr"] / self.target_lrs[0]  # group 0 (the head) always trains
        for i, level in enumerate(self.level):
            active = level < self.unfrozen
            run.scheduler.base_lrs[i] = self.target_lrs[i] if active else 0.0
            run.optimizer.param_groups[i]["lr"] = self.target_lrs[i] * factor if active else 0.0

    def _advance(self, run: Run, done: int) -> None:
        table = run.table(GradualUnfreezingTable)
        wanted = min(len(self.groups), 1 + done // table.every)
        if wanted > self.unfrozen:
            self._set_trainable(run, wanted)
            self._apply_lrs(run)
            self.unfrozen_at.append(run.step)

    @hookimpl
    def adapt_on_epoch_start(self, run: Run, epoch: int) -> None:
        if run.table(GradualUnfreezingTable).unit == "epoch":
            self._advance(run, epoch)

    @hookimpl
    def adapt_on_step_end(self, run: Run) -> None:
        if run.table(GradualUnfreezingTable).unit == "step":
            self._advance(run, run.step)

    @hookimpl
    def adapt_summary(self) -> dict[str, Any]:
        return {
            "gradual-unfreezing": {
                "groups": len(self.groups),
                "unfrozen": self.unfrozen,
                "unfrozen_at_step": self.unfrozen_at,
            }
        }

    @hookimpl
    def adapt_save_artifacts(self, run: Run, directory: Path) -> None:
        save_model_folder(run, directory / ARTIFACT_DIR)

    @hookimpl
    def adapt_load_artifacts(self, run: Run, directory: Path) -> None:
        load_model_folder(run, directory / ARTIFACT_DIR)
